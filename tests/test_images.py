"""Image building: which images a fleet's `images:` entries make, and the bad entries."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, Run, orchestrate, snapshot
from imagetools import Disk

from orchestrator.api import evaluate_fleet
from orchestrator.errors import UsageError
from orchestrator.executor.lock import FleetLock
from orchestrator.images.build import check_build_host, source_date_epoch
from orchestrator.images.plan import plan_images
from orchestrator.paths import shipped_roles_dir

IMAGEFS = os.path.join(shipped_roles_dir(), "image_builder", "files", "imagefs")


def test_image_list_names_one_file_per_host(cli: Callable[..., Run], tmp_path: Path) -> None:
    r = cli("--fleet", str(BUNDLED), "image", "list", "--json", "--out", str(tmp_path))
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["format"] == "orchestrate.image-list/1"
    rows = {(x["image"], x["host"]): x for x in doc["images"]}
    assert sorted(rows) == [
        ("data-storage-vm", "data-storage"),
        ("pi-cards", "pi-1"),
        ("pi-cards", "pi-2"),
    ]
    assert rows[("pi-cards", "pi-2")]["file"] == "pi-cards/pi-2.img"
    assert rows[("data-storage-vm", "data-storage")]["format"] == "qcow2"
    assert all(x["sha256"] is None for x in rows.values())


def test_a_format_that_does_not_fit_the_architecture_is_located(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: img
                builders: {x: {arch: x86_64}, a: {arch: aarch64}}
                hosts: {vm: {builder: x}, board: {builder: a}}
                images:
                  cards: {hosts: [board, vm], format: sd}
            """
        }
    )
    r = cli("--fleet", str(root), "image", "list")
    assert r.code == 1
    assert (
        "fleet.yaml:5:3: image 'cards': sd images are made for aarch64 hosts; vm is x86_64" in r.err
    )
    with pytest.raises(UsageError, match=r"unknown image.*nope.*the fleet has: cards"):
        plan_images(evaluate_fleet(str(root)), ["nope"])


# --- refusals before anything is built ------------------------------------------------------


def test_build_needs_names_or_all(cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(BUNDLED), "image", "build")
    assert r.code == 1 and "name the image entries to build, or give --all" in r.err
    r = cli("--fleet", str(BUNDLED), "image", "build", "pi-cards", "--all")
    assert r.code == 1 and "(not both)" in r.err
    r = cli("--fleet", str(BUNDLED), "image", "build", "pi-cards", "--limit", "LINDA")
    assert r.code == 1
    assert "--limit selects none of the chosen images' hosts (pi-1, pi-2)" in r.err


def test_bad_entries_are_located_and_nothing_is_written(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: img
                builders: {x: {arch: x86_64}}
                hosts:
                  vm: {builder: x}
                  far: {builder: x, deploy: {user: admin, build_on: remote}}
                images:
                  tiny: {hosts: [vm], format: qcow2, size: 600M}
                  vm: {hosts: [vm], format: raw, include_host_key: true}
                  far: {hosts: [far], format: raw}
            """
        }
    )
    before = snapshot(root)
    r = cli("--fleet", str(root), "image", "build", "tiny")
    assert r.code == 1
    assert (
        "fleet.yaml:7:3: image 'tiny': size 600M leaves 468 MiB for the root filesystem after "
        "the 128 MiB boot partition; give at least 900M" in r.err
    )
    r = cli("--fleet", str(root), "image", "build", "vm")
    assert r.code == 1
    assert "image 'vm' asks for vm's age key (include_host_key: true)" in r.err
    assert "orchestrate secrets host-key vm" in r.err
    r = cli("--fleet", str(root), "image", "build", "far")
    assert r.code == 1
    assert (
        "far builds its image itself (deploy.build_on: remote) and logs in as admin: a remote "
        "build host is reached as root (set deploy.user: root)" in r.err
    )
    # what a compile writes is the build; no image folder, no work folder
    assert not (root / ".orchestrate" / "images").exists()
    assert {k: v for k, v in snapshot(root).items() if not k.startswith(".orchestrate")} == before


def test_one_build_at_a_time_per_output_folder(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: img
                builders: {x: {arch: x86_64}}
                hosts: {vm: {builder: x}}
                images: {vm: {hosts: [vm], format: raw}}
            """
        }
    )
    out = tmp_path / "out"
    with FleetLock(str(out), "image build"):
        r = cli("--fleet", str(root), "image", "build", "vm", "--out", str(out))
    assert r.code == 4
    assert f"pid {os.getpid()}, image build" in r.err
    assert sorted(os.listdir(out)) == ["lock"]


def test_the_build_host_is_checked_first(monkeypatch: pytest.MonkeyPatch) -> None:
    planned = [i for i in plan_images(evaluate_fleet(str(BUNDLED))) if i.host == "pi-1"]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "mcopy" else real_which(t))
    # an image its own host builds (deploy.build_on: remote) needs nothing on this machine
    check_build_host([replace(planned[0], build_on="remote")])
    with pytest.raises(UsageError) as e:
        check_build_host(planned)
    text = str(e.value)
    assert "image builds run as root" in text
    assert "missing tools: mcopy" in text
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH must be seconds since 1970"):
        source_date_epoch()


def test_a_root_filesystem_too_big_for_its_partition_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(12 * 1024 * 1024))
    res = subprocess.run(
        [
            IMAGEFS,
            "ext4",
            str(tree),
            str(tmp_path / "root.img"),
            "8",
            str(uuid.uuid4()),
            "rootfs",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert (
        "holds 12 MiB, too much for its 8 MiB partition: raise the image entry's `size`"
        in res.stderr
    )
    assert sorted(os.listdir(tmp_path)) == ["tree"]


# --- real builds ------------------------------------------------------------------------------


def query(root: Path, expr: str) -> Any:
    r = orchestrate(root, "query", expr)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def fleet_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled fleet, with terminal-zero (a VPN host: its WireGuard key is a secret) as a
    libvirt VM image too, that carries its own age key (the example's demo key, waiting for the
    host's first apply as any new key would)."""
    root = tmp_path_factory.mktemp("images") / "fleet"
    shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(".orchestrate"))
    with (root / "fleet.yaml").open("a") as fh:
        fh.write("  desk-vm: {hosts: [terminal-zero], format: qcow2, include_host_key: true}\n")
    key = root / "demo-keys/hosts/terminal-zero.agekey"
    r = orchestrate(root, "secrets", "host-key", "terminal-zero", "--import", str(key), "--force")
    assert r.returncode == 0, r.stderr
    return root


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def vm_image(fleet_copy: Path) -> Path:
    """terminal-zero's qcow2, built as a user would: `orchestrate image build desk-vm`."""
    r = orchestrate(fleet_copy, "image", "build", "desk-vm")
    assert r.returncode == 0, r.stderr[-4000:]
    image = fleet_copy / ".orchestrate/images/desk-vm/terminal-zero.qcow2"
    digest, name = r.stdout.split()
    assert digest == sha256(image) and name.endswith("desk-vm/terminal-zero.qcow2")
    for step in ("prepare: done", "roles: Install the stable packages", "finish: done"):
        assert step in r.stderr
    return image


@pytest.fixture(scope="module")
def vm_disk(vm_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Disk:
    return Disk.open(vm_image, tmp_path_factory.mktemp("vm_image-disk"))


@pytest.mark.images
def test_qcow2_layout_uefi_boot_and_root_label(vm_disk: Disk) -> None:
    t = vm_disk.table
    assert t["label"] == "gpt"
    esp, root = t["partitions"]
    assert esp["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" and esp["name"] == "ESP"
    assert root["name"] == "rootfs" and vm_disk.root_label() == "rootfs"
    files = vm_disk.fat_files()
    assert {"EFI/BOOT/BOOTX64.EFI", "vmlinuz", "initrd.img", "loader/loader.conf"} <= files
    entry = vm_disk.fat_cat("loader/entries/debian.conf")
    assert f"root=PARTUUID={root['uuid'].lower()} " in entry
    assert "console=ttyS0" in entry
    fstab = vm_disk.cat("/etc/fstab")
    assert fstab.startswith(f"PARTUUID={root['uuid'].lower()} / ext4 ")


@pytest.mark.images
def test_qcow2_carries_the_hosts_configuration(vm_disk: Disk, fleet_copy: Path) -> None:
    config = query(fleet_copy, 'hosts."terminal-zero".config')
    assert vm_disk.cat("/etc/hostname").strip() == config["system"]["hostname"]
    sshd = vm_disk.cat("/etc/ssh/sshd_config.d/10-orchestrate.conf")
    assert f"Port {config['services']['openssh']['port']}" in sshd
    assert "PasswordAuthentication no" in sshd
    passwd = vm_disk.cat("/etc/passwd")
    for admin, spec in config["users"]["admins"].items():
        assert f"\n{admin}:" in passwd
        keys = vm_disk.cat(f"/home/{admin}/.ssh/authorized_keys").splitlines()
        assert keys == spec["ssh_keys"]
    installed = vm_disk.packages()
    wanted = set(config["environment"]["system_packages"]) | {
        "prometheus-node-exporter",
        "nftables",
    }
    assert wanted <= installed, wanted - installed
    wants = vm_disk.ls("/etc/systemd/system/multi-user.target.wants")
    assert {"prometheus-node-exporter.service", "ssh.service"} <= set(wants)
    # the ruleset loads early at boot
    assert "nftables.service" in vm_disk.ls("/etc/systemd/system/sysinit.target.wants")
    assert "table inet orchestrate" in vm_disk.cat("/etc/nftables.conf")


AGE_SECRET = b"AGE-SECRET-KEY-1"
# an age identity: the prefix and 58 bech32 characters (sops itself holds the bare prefix)
AGE_IDENTITY = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]{58}")


def identities(disk: Disk) -> set[bytes]:
    return disk.matches(AGE_IDENTITY, 74)


def secret_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.startswith(AGE_SECRET)]


@pytest.mark.images
def test_qcow2_carries_its_own_age_key_and_no_other_secret(vm_disk: Disk, fleet_copy: Path) -> None:
    assert vm_disk.cat("/etc/machine-id") == ""
    assert not [n for n in vm_disk.ls("/etc/ssh") if n.startswith("ssh_host_")]
    # include_host_key: the host's own identity, private to root ...
    own = fleet_copy / ".orchestrate/host-keys/terminal-zero.agekey"
    assert vm_disk.cat("/var/lib/orchestrate/host.agekey") == own.read_text()
    assert vm_disk.mode("/var/lib/orchestrate/host.agekey") == "0400"
    # ... is the only age identity on the disk: no admin's, no other host's
    (key,) = secret_lines(own)
    assert identities(vm_disk) == {key} and vm_disk.count(key) == 1
    others = [fleet_copy / "demo-keys/admin.agekey", *(fleet_copy / "demo-keys/hosts").iterdir()]
    for other in others:
        if other.name != "terminal-zero.agekey":
            for line in secret_lines(other):
                assert vm_disk.count(line) == 0, other.name
    # its secrets are there encrypted only, for the boot service; no plaintext value
    assert vm_disk.mode("/var/lib/orchestrate/secrets.json") == "0600"
    kept = json.loads(vm_disk.cat("/var/lib/orchestrate/secrets.json"))
    assert [s["name"] for s in kept["secrets"]] == ["wireguard/hosts/terminal-zero"]
    assert "orchestrate-secrets.service" in vm_disk.ls(
        "/etc/systemd/system/multi-user.target.wants"
    )
    values = _leaves(_admin_decrypt(fleet_copy, fleet_copy / "secrets/wireguard.yaml"))
    assert values and not [v for v in values if vm_disk.count(v.encode()) or v in str(kept)]


def _admin_decrypt(fleet: Path, path: Path) -> Any:
    from orchestrator.secrets.sops import controller_binary

    env = {"SOPS_AGE_KEY_FILE": str(fleet / "demo-keys/admin.agekey"), "PATH": "/usr/bin:/bin"}
    cmd = [controller_binary(), "decrypt", "--output-type", "json", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _leaves(tree: Any) -> list[str]:
    if isinstance(tree, dict):
        return [v for k, x in tree.items() if k != "sops" for v in _leaves(x)]
    return [str(tree)] if tree is not None else []


@pytest.mark.images
def test_manifest_records_the_hash_and_the_inputs(
    vm_image: Path, fleet_copy: Path, cli: Callable[..., Run]
) -> None:
    manifest = json.loads((vm_image.parent / "manifest.json").read_text())
    entry = manifest["hosts"]["terminal-zero"]
    assert entry["file"] == "terminal-zero.qcow2" and entry["sha256"] == sha256(vm_image)
    inputs = entry["inputs"]
    assert set(inputs["roles"]) == set(query(fleet_copy, 'hosts."terminal-zero".roles'))
    assert inputs["suite"] == "bookworm" and "linux-image-amd64" in inputs["packages"]
    assert inputs["source_date_epoch"] == 1735689600 and inputs["host_key"] is True
    r = cli("--fleet", str(fleet_copy), "image", "list")
    row = next(line for line in r.out.splitlines() if line.startswith("desk-vm\t"))
    assert row.endswith(f"built {entry['sha256'][:12]}")


def test_an_unreachable_remote_build_host_fails_cleanly(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: img
                builders: {x: {arch: x86_64}}
                hosts: {far: {builder: x, deploy: {host: 127.0.0.1, port: 9, build_on: remote}}}
                images: {far: {hosts: [far], format: raw}}
            """
        }
    )
    r = cli("--fleet", str(root), "image", "build", "far")
    assert r.code == 1
    assert "building on far itself (deploy.build_on: remote, 127.0.0.1)" in r.err
    assert "far/far.raw: the image builder's prepare stage failed:" in r.err
    assert "ssh: connect to host 127.0.0.1 port 9: Connection refused" in r.err
    assert "Traceback" not in r.err
    images = root / ".orchestrate" / "images"
    assert [p.name for p in images.rglob("*") if p.is_file()] == ["lock"]  # the build lock


@pytest.mark.images
@pytest.mark.containers
def test_the_host_builds_its_own_image_with_the_same_bytes(
    vm_image: Path, fleet_copy: Path, tmp_path: Path
) -> None:
    """deploy.build_on: remote: the image is built on terminal-zero itself (its testbed container)
    over SSH, seeded from this machine's cache, brought back, and is byte for byte the local
    build."""
    remote = fleet_copy.parent / "remote"
    shutil.copytree(fleet_copy, remote, ignore=shutil.ignore_patterns("images", "testbed*"))
    spec = remote / "fleet.yaml"
    text = spec.read_text()
    assert text.count("deploy: {host: 10.88.127.10}") == 1
    spec.write_text(text.replace("{host: 10.88.127.10}", "{host: 10.88.127.10, build_on: remote}"))
    up = orchestrate(remote, "testbed", "up", "--hosts", "terminal-zero")
    try:
        assert up.returncode == 0, up.stderr
        r = orchestrate(remote, "image", "build", "desk-vm", "--out", str(tmp_path))
        assert r.returncode == 0, r.stderr[-4000:]
        record = json.loads((remote / ".orchestrate/testbed.json").read_text())
        box = record["hosts"]["terminal-zero"]["container"]
        left = podman_exec(box, "ls -A /var/tmp; ip netns list; ls -A /run/orchestrate-build-net")
    finally:
        down = orchestrate(remote, "testbed", "down")
    assert down.returncode == 0, down.stderr
    assert "building on terminal-zero itself (deploy.build_on: remote, 127.0.0.1)" in r.stderr
    assert "this machine's cache seeds it" in r.stderr and "Run debootstrap" not in r.stderr
    assert "roles: Install the stable packages" in r.stderr
    built = tmp_path / "desk-vm/terminal-zero.qcow2"
    assert sha256(built) == sha256(vm_image)
    manifest = json.loads((tmp_path / "desk-vm/manifest.json").read_text())
    assert manifest["hosts"]["terminal-zero"]["built_on"] == "terminal-zero"
    # the build host keeps its cache, and nothing else: no work folder, namespace or slirp4netns
    assert left.strip() == "", left


def podman_exec(container: str, script: str) -> str:
    from orchestrator.testbed.images import podman

    res = podman("exec", container, "sh", "-c", script, check=False)
    assert res.returncode == 0, res.stderr
    return str(res.stdout)


@pytest.mark.images
def test_a_failing_build_keeps_the_previous_image(vm_image: Path, fleet_copy: Path) -> None:
    images = vm_image.parent.parent
    before = {p.name: sha256(p) for p in vm_image.parent.iterdir()}
    broken = fleet_copy.parent / "broken"
    shutil.copytree(fleet_copy, broken, ignore=shutil.ignore_patterns(".orchestrate"))
    keys = ".orchestrate/host-keys"  # desk-vm asks for terminal-zero's key
    shutil.copytree(fleet_copy / keys, broken / keys)
    module = broken / "modules/environment/code.yaml"  # terminal-zero's development tools
    text = module.read_text()
    assert text.count("[python3-venv, ripgrep]") == 1
    module.write_text(text.replace("ripgrep]", "ripgrep, no-such-package-orch]"))
    r = orchestrate(broken, "image", "build", "desk-vm", "--out", str(images))
    assert r.returncode == 1
    assert "desk-vm/terminal-zero.qcow2: terminal-zero's roles failed in the image:" in r.stderr
    assert "environment: Install the stable packages" in r.stderr
    assert "no-such-package-orch" in r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name: sha256(p) for p in vm_image.parent.iterdir()} == before
    assert not (images / ".work").exists()


@pytest.mark.images
def test_sigterm_stops_the_build_and_keeps_the_previous_image(
    vm_image: Path, fleet_copy: Path
) -> None:
    images = vm_image.parent.parent
    before = {p.name: sha256(p) for p in vm_image.parent.iterdir()}
    cmd = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(fleet_copy)]
    proc = subprocess.Popen(
        [*cmd, "image", "build", "desk-vm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the roles run in the image
        seen.append(line)
        if line.startswith("  roles: "):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "desk-vm/terminal-zero.qcow2: interrupted; nothing of it was kept" in rest
    assert {p.name: sha256(p) for p in vm_image.parent.iterdir()} == before
    assert not (images / ".work").exists()
    left = subprocess.run(["pgrep", "-f", str(images / ".work")], capture_output=True, check=False)
    assert left.stdout == b""  # no ansible-playbook left behind
    # the build network went down with it
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert "orchestrate-image-" not in netns.stdout
    assert not glob.glob("/run/orchestrate-build-net/*.pid")


@pytest.mark.images
@pytest.mark.containers
def test_first_plan_against_a_machine_made_from_the_image_shows_no_change(
    vm_image: Path, fleet_copy: Path
) -> None:
    up = orchestrate(fleet_copy, "testbed", "up", "--from-image", "desk-vm")
    try:
        assert up.returncode == 0, up.stderr
        # the image carries the host's age key: its secrets were installed at boot
        record = json.loads((fleet_copy / ".orchestrate/testbed.json").read_text())
        box = record["hosts"]["terminal-zero"]["container"]
        secret = "/run/orchestrate/secrets/wireguard/hosts/terminal-zero"
        assert podman_exec(box, f"stat -c '%a %U' {secret}").strip() == "400 root"
        plan = orchestrate(
            fleet_copy, "plan", "--limit", "terminal-zero", "--json", "--detailed-exitcode"
        )
        assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
        host = json.loads(plan.stdout)["hosts"]["terminal-zero"]
        assert host["first_apply"] and not host["config_changes"]
        assert host["check"]["changed"] == [] and host["check"]["failed"] == []
        assert host["check"]["ok"] > 20  # the roles really ran against it
        _a_trial_is_undone_by_a_transient_systemd_unit(fleet_copy, box)
    finally:
        down = orchestrate(fleet_copy, "testbed", "down")
    assert down.returncode == 0, down.stderr
    assert not (fleet_copy / ".orchestrate/testbed-images").exists() or not any(
        (fleet_copy / ".orchestrate/testbed-images").iterdir()
    )


def _a_trial_is_undone_by_a_transient_systemd_unit(fleet: Path, box: str) -> None:
    """Where systemd runs the host, an apply's watchdog is a transient unit (systemd-run), and
    a trial nobody confirms is undone by it."""
    import time

    host_file = fleet / "hosts/terminal-zero.yaml"
    original = host_file.read_text()
    aliases = "/etc/profile.d/orchestrate-aliases.sh"
    before = podman_exec(box, f"cat {aliases}")
    host_file.write_text(original.replace("apply --yes", "apply --yes --serial 1"))
    try:
        r = orchestrate(fleet, "apply", "--limit", "terminal-zero", "--trial", "20s")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "--serial 1" in podman_exec(box, f"cat {aliases}")
        units = podman_exec(box, "systemctl list-units --all --plain --no-legend 'orchestrate-*'")
        assert "orchestrate-rollback-" in units, units
        deadline = time.monotonic() + 90
        while podman_exec(box, f"cat {aliases}") != before and time.monotonic() < deadline:
            time.sleep(2)
        assert podman_exec(box, f"cat {aliases}") == before
    finally:
        host_file.write_text(original)


@pytest.mark.images
@pytest.mark.slow
def test_the_vm_image_boots_under_uefi_to_sshd_on_the_deploy_port(
    vm_image: Path, fleet_copy: Path, tmp_path: Path
) -> None:
    before = sha256(vm_image)
    log = tmp_path / "console.log"
    r = orchestrate(fleet_copy, "image", "boot", "desk-vm", "--console-log", str(log))
    assert r.returncode == 0, r.stderr[-3000:]
    host, up, ssh = r.stdout.split("\t")
    assert host == "terminal-zero" and up.startswith("up ") and ssh.startswith("ssh ")
    console = log.read_text()
    assert "orchestrate: terminal-zero is up" in console
    assert "Started ssh.service" in console or "OpenBSD Secure Shell server" in console
    assert sha256(vm_image) == before  # the machine wrote to an overlay


@pytest.fixture(scope="module")
def pi_card(fleet_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Disk:
    r = orchestrate(fleet_copy, "image", "build", "pi-cards", "--limit", "pi-1")
    assert r.returncode == 0, r.stderr[-4000:]
    image = fleet_copy / ".orchestrate/images/pi-cards/pi-1.img"
    assert not (image.parent / "pi-2.img").exists()
    return Disk.open(image, tmp_path_factory.mktemp("pi-disk"))


@pytest.mark.images
@pytest.mark.slow
def test_sd_card_has_the_firmware_partition_and_the_boards_root(
    pi_card: Disk, fleet_copy: Path
) -> None:
    t = pi_card.table
    assert t["label"] == "dos"
    boot, root = t["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True and root["type"] == "83"
    assert "RASPIFIRM" in pi_card.fat_label()
    files = pi_card.fat_files()
    assert {"config.txt", "cmdline.txt", "bcm2711-rpi-4-b.dtb"} <= files
    assert any(f.startswith("vmlinuz") for f in files) and any(
        f.startswith("initrd") for f in files
    )
    label_id = t["id"].removeprefix("0x")
    assert f"root=PARTUUID={label_id}-02 " in pi_card.fat_cat("cmdline.txt")
    config = query(fleet_copy, 'hosts."pi-1".config')
    assert pi_card.cat("/etc/hostname").strip() == config["system"]["hostname"]
    assert "LABEL=RASPIFIRM /boot/firmware vfat" in pi_card.cat("/etc/fstab")
    assert pi_card.ls("/boot/firmware") == []
    installed = pi_card.packages()
    assert {
        "raspi-firmware",
        "linux-image-arm64",
        *config["environment"]["system_packages"],
    } <= installed
    assert "Architecture: arm64" in pi_card.cat("/var/lib/dpkg/status")
    # no include_host_key: no age identity at all
    assert not pi_card.exists("/var/lib/orchestrate/host.agekey")
    assert identities(pi_card) == set()


@pytest.mark.images
@pytest.mark.slow
def test_an_entry_with_two_hosts_makes_one_raw_disk_each(
    fleet_copy: Path, tmp_path: Path, cli: Callable[..., Run]
) -> None:
    """The seed's mkUncompressedSdImages for x86_64: one `raw` entry, two hosts, two disks with
    their own identifiers and configuration, one manifest."""
    fleet = fleet_copy.parent / "pair"
    shutil.copytree(fleet_copy, fleet, ignore=shutil.ignore_patterns("images", "testbed*"))
    with (fleet / "fleet.yaml").open("a") as fh:
        fh.write("  desks: {hosts: [LINDA, terminal-zero], format: raw}\n")
    out = tmp_path / "out"
    r = orchestrate(fleet, "image", "build", "desks", "--out", str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[1/2] desks/LINDA.raw" in r.stderr and "[2/2] desks/terminal-zero.raw" in r.stderr
    manifest = json.loads((out / "desks/manifest.json").read_text())
    assert sorted(manifest["hosts"]) == ["LINDA", "terminal-zero"]
    tables = {}
    for host in ("LINDA", "terminal-zero"):
        image = out / f"desks/{host}.raw"
        assert manifest["hosts"][host]["sha256"] == sha256(image)
        assert manifest["hosts"][host]["file"] == f"{host}.raw"
        info = json.loads(_run("qemu-img", "info", "--output=json", str(image)))
        assert info["format"] == "raw"
        disk = Disk.open(image, tmp_path / host)
        tables[host] = disk.table
        config = query(fleet, f'hosts."{host}".config')
        assert disk.cat("/etc/hostname").strip() == config["system"]["hostname"]
        assert config["environment"]["system_packages"]
        assert set(config["environment"]["system_packages"]) <= disk.packages()
        # terminal-zero uses secrets: none are delivered into an image, and no key goes in
        assert not disk.exists("/var/lib/orchestrate/host.agekey")
        assert identities(disk) == set()
    assert tables["LINDA"]["id"] != tables["terminal-zero"]["id"]
    uuids = {h: {p["uuid"] for p in t["partitions"]} for h, t in tables.items()}
    assert not uuids["LINDA"] & uuids["terminal-zero"]
    r2 = cli("--fleet", str(fleet), "image", "list", "--out", str(out))
    rows = [line for line in r2.out.splitlines() if line.startswith("desks\t")]
    assert len(rows) == 2 and all("\tbuilt " in row for row in rows)


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout
