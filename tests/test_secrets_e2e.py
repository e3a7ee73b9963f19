"""Secrets on real container hosts over SSH: delivery with owner and mode, decryption only by
recipients, a canary sweep for plaintext after plan, apply, a failing task, an unreachable host
and a schema error (all with -vvv and --diff), rekey locking a removed host out, and a tampered
file rejected by the SOPS MAC on the host."""

from __future__ import annotations

import json
import os
import secrets as random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import orchestrate as run_cli
from conftest import write_tree
from test_secrets import APP as APP_OPTIONS
from test_secrets import FLEET

from orchestrator.secrets.sops import controller_binary

pytestmark = pytest.mark.containers

APP = (
    APP_OPTIONS
    + """tasks:
  - name: Read the password file's size (the service would read the file)
    ansible.builtin.stat: {path: "{{ config.app.password_file }}"}
    when: config.app.enable
"""
)
BOOM = """
tasks:
  - name: Fail on beta
    ansible.builtin.fail: {msg: planned failure}
    when: inventory_hostname == 'beta'
"""
HOSTS = ("alpha", "beta", "gamma")
CANARIES: dict[str, str] = {}
OUTPUTS: list[str] = []
CONTAINERS: dict[str, str] = {}


def _conf_env() -> dict[str, str]:
    import orchestrator.testbed.images as images

    return {**os.environ, "CONTAINERS_CONF": os.path.join(images.HERE, "containers.conf")}


def on_host(host: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "exec", CONTAINERS[host], "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env=_conf_env(),
    )


def orchestrate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = run_cli(root, *args, timeout=900)
    OUTPUTS.extend([r.stdout, r.stderr])
    return r


def sops(*args: str, key: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """sops with an age identity given in memory (SOPS_AGE_KEY), never in a file."""
    env = {"SOPS_AGE_KEY": key, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(
        [controller_binary(), *args], input=data, capture_output=True, env=env, check=False
    )


def host_identity(host: str) -> str:
    r = on_host(host, "cat /var/lib/orchestrate/host.agekey")
    assert r.returncode == 0, r.stderr
    return r.stdout


def write_secret_file(root: Path, name: str, plaintext: str) -> None:
    """Encrypt from memory to the admin, then let `secrets rekey` add the hosts."""
    admins = yaml.safe_load((root / "secrets/recipients.yaml").read_text())["admins"]
    out = sops(
        "encrypt", "--age", ",".join(admins), "--input-type", "yaml", "--output-type", "yaml",
        "/dev/stdin", key="", data=plaintext.encode(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (root / "secrets" / name).write_bytes(out.stdout)
    r = orchestrate(root, "secrets", "rekey")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("secfleet")
    root = write_tree(
        base / "fleet",
        {"fleet.yaml": FLEET, "app.yaml": APP, "off.yaml": "config:\n  app.enable: false\n"},
    )
    old = os.environ.get("SOPS_AGE_KEY_FILE")
    os.environ["SOPS_AGE_KEY_FILE"] = str(base / "admin.agekey")
    CANARIES.update(
        db="canary-db-" + random.token_hex(12), token="canary-token-" + random.token_hex(12)
    )
    try:
        assert orchestrate(root, "secrets", "keygen").returncode == 0
        for h in HOSTS:
            assert orchestrate(root, "secrets", "host-key", h).returncode == 0
        write_secret_file(root, "db.yaml", f"password: {CANARIES['db']}\n")
        write_secret_file(root, "alpha.yaml", f"token: {CANARIES['token']}\n")
        up = orchestrate(root, "testbed", "up")
        assert up.returncode == 0, up.stderr
        record = json.loads((root / ".orchestrate" / "testbed.json").read_text())
        CONTAINERS.update({h: v["container"] for h, v in record["hosts"].items()})
        yield root
    finally:
        orchestrate(root, "testbed", "down")
        if old is None:
            os.environ.pop("SOPS_AGE_KEY_FILE", None)
        else:
            os.environ["SOPS_AGE_KEY_FILE"] = old


def installed(host: str) -> list[str]:
    r = on_host(
        host,
        "cd /run/orchestrate/secrets 2>/dev/null && "
        "find . -type f -exec stat -c '%n %U %G %a' {} +",
    )
    return sorted(r.stdout.splitlines())


@pytest.fixture(scope="module")
def delivered(sec: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The fleet's first plan and apply, and a second apply: made once, for every test that
    needs the secrets on the hosts (whichever runs first)."""
    runs = {"plan": orchestrate(sec, "plan", "--detailed-exitcode", "-vvv")}
    runs["apply"] = orchestrate(sec, "apply", "--yes", "-vvv", "--diff")
    # the new host keys were delivered: the control node no longer keeps them
    runs["keys_left"] = subprocess.CompletedProcess(
        [], 0, " ".join(p.name for p in (sec / ".orchestrate" / "host-keys").glob("*.agekey"))
    )
    runs["again"] = orchestrate(sec, "apply", "--yes")
    return runs


def test_secrets_reach_exactly_the_hosts_that_use_them(
    sec: Path, delivered: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    r = delivered["plan"]
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr
    said = " ".join(r.stdout.split())
    assert "secrets that would change (first delivery): alpha/token, db/password" in said
    r = delivered["apply"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert installed("alpha") == [
        "./alpha/token root root 400",
        "./db/password nobody nogroup 440",
    ]
    assert installed("beta") == ["./db/password nobody nogroup 440"]
    assert installed("gamma") == []
    assert on_host("alpha", "cat /run/orchestrate/secrets/db/password").stdout in (
        CANARIES["db"],
        CANARIES.get("db2"),  # when the rotation's tests ran first
    )
    # the folders are not world-readable; the host key is root's alone
    modes = on_host(
        "alpha",
        "stat -c '%a %U' /run/orchestrate/secrets.d /run/orchestrate/secrets/ "
        "/run/orchestrate/secrets/db /var/lib/orchestrate /var/lib/orchestrate/host.agekey",
    ).stdout.split("\n")
    assert modes[:5] == ["751 root", "751 root", "751 root", "700 root", "400 root"]
    assert delivered["keys_left"].stdout == ""
    assert delivered["again"].returncode == 0
    # the fixture made the fleet's first two applies: the second changed nothing
    summary = json.loads((_apply_runs(sec)[1] / "summary.json").read_text())
    assert all(h["changed"] == 0 for h in summary["hosts"].values()), summary


def _apply_runs(sec: Path) -> list[Path]:
    return sorted((sec / ".orchestrate/runs").glob("*-apply"))


def test_a_host_that_is_not_a_recipient_cannot_decrypt(sec: Path, delivered: object) -> None:
    gamma, beta, alpha = (host_identity(h) for h in ("gamma", "beta", "alpha"))
    db, tok = str(sec / "secrets/db.yaml"), str(sec / "secrets/alpha.yaml")
    assert sops("decrypt", db, key=gamma).returncode != 0
    assert sops("decrypt", tok, key=beta).returncode != 0
    assert sops("decrypt", db, key=alpha).returncode == 0  # the control for both


def test_host_key_from_host_reads_the_installed_key(sec: Path, delivered: object) -> None:
    recorded = (sec / "secrets/recipients.yaml").read_text()
    r = orchestrate(sec, "secrets", "host-key", "gamma", "--from-host", "--force")
    assert r.returncode == 0, r.stderr
    public = next(ln.split()[-1] for ln in host_identity("gamma").splitlines() if "public" in ln)
    assert f"host gamma: key {public} recorded" in r.stderr
    assert (sec / "secrets/recipients.yaml").read_text() == recorded
    assert not (sec / ".orchestrate/host-keys/gamma.agekey").exists()


@pytest.fixture(scope="module")
def rotated(sec: Path, delivered: object) -> dict[str, Any]:
    """db/password changed to a second canary: the plan that names it, what beta held before
    the apply, and the apply. Made once, for the tests that need the rotated value."""
    CANARIES["db2"] = "canary-db2-" + random.token_hex(12)
    write_secret_file(sec, "db.yaml", f"password: {CANARIES['db2']}\n")
    plan = orchestrate(sec, "plan", "-vvv", "--diff", "--detailed-exitcode")
    before = on_host("beta", "cat /run/orchestrate/secrets/db/password").stdout
    return {"plan": plan, "before": before, "apply": orchestrate(sec, "apply", "--yes", "-vvv")}


def test_plan_names_the_changed_secret_never_its_value(rotated: dict[str, Any]) -> None:
    r = rotated["plan"]
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr
    assert "secrets that would change: db/password" in " ".join(r.stdout.split())
    assert rotated["before"] == CANARIES["db"]  # a plan changes nothing
    r = rotated["apply"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert on_host("beta", "cat /run/orchestrate/secrets/db/password").stdout == CANARIES["db2"]


def test_after_a_reboot_the_boot_service_puts_the_same_secrets_back(
    sec: Path, rotated: object
) -> None:
    """/run is empty after a reboot: orchestrate-secrets.service installs the secrets again from
    the ciphertexts the last apply kept. The containers run no systemd, so the test runs the
    unit's own command, as systemd would at boot."""
    unit = on_host("alpha", "cat /etc/systemd/system/orchestrate-secrets.service").stdout
    command = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart=")).split("=", 1)[1]
    assert command.endswith("/var/lib/orchestrate/secrets.json")
    kept = on_host("alpha", "stat -c '%a %U' /var/lib/orchestrate/secrets.json").stdout.strip()
    assert kept == "600 root"
    before = {h: installed(h) for h in HOSTS}
    for h in ("alpha", "beta"):
        r = on_host(h, f"rm -rf /run/orchestrate && {command}")
        assert r.returncode == 0 and "installed" in r.stdout, r.stderr
    assert {h: installed(h) for h in HOSTS} == before
    assert on_host("beta", "cat /run/orchestrate/secrets/db/password").stdout == CANARIES["db2"]
    plan = orchestrate(sec, "plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr


def test_failing_task_unreachable_host_and_schema_error_runs(sec: Path, rotated: object) -> None:
    (sec / "boom.yaml").write_text(BOOM)
    (sec / "fleet.yaml").write_text(FLEET.replace("[app.yaml]", "[app.yaml, boom.yaml]"))
    r = orchestrate(sec, "apply", "--yes", "-vvv", "--diff")
    assert r.returncode == 3 and "beta" in r.stdout + r.stderr
    (sec / "fleet.yaml").write_text(FLEET)

    stopped = subprocess.run(
        ["podman", "stop", "-t", "0", CONTAINERS["beta"]], capture_output=True, env=_conf_env()
    )
    assert stopped.returncode == 0
    try:
        r = orchestrate(sec, "apply", "--yes", "-vvv", "--diff")
        assert r.returncode == 3, r.stdout[-2000:] + r.stderr
        runs = sorted((sec / ".orchestrate/runs").glob("*-apply"))
        summary = json.loads((runs[-1] / "summary.json").read_text())
        assert summary["hosts"]["beta"]["unreachable"] >= 1
    finally:
        subprocess.run(
            ["podman", "start", CONTAINERS["beta"]], capture_output=True, env=_conf_env()
        )
        from orchestrator.testbed.manager import answers, load_record

        record = load_record(str(sec / ".orchestrate"))["beta"]
        import time

        deadline = time.monotonic() + 60
        while not answers(record) and time.monotonic() < deadline:
            time.sleep(1)

    (sec / "bad.yaml").write_text("config:\n  app.enable: maybe\n")
    (sec / "fleet.yaml").write_text(FLEET.replace("[off.yaml]", "[bad.yaml]"))
    r = orchestrate(sec, "apply", "--yes", "-vvv", "--diff")
    assert r.returncode == 1 and "bad.yaml:2:" in r.stderr, r.stderr
    (sec / "fleet.yaml").write_text(FLEET)
    r = orchestrate(sec, "apply", "--yes", "-vvv", "--diff")  # beta restarted: /run is empty
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert on_host("beta", "cat /run/orchestrate/secrets/db/password").stdout == CANARIES["db2"]


def test_a_tampered_file_is_rejected_on_the_host_and_nothing_is_lost(
    sec: Path, rotated: object
) -> None:
    path = sec / "secrets/db.yaml"
    good = path.read_text()
    start = good.index("data:") + 5
    path.write_text(good[:start] + ("A" if good[start] != "A" else "B") + good[start + 1 :])
    try:
        r = orchestrate(sec, "apply", "--yes", "--limit", "alpha", "-vvv", "--diff")
        assert r.returncode == 3
        said = " ".join((r.stdout + r.stderr).split())
        assert "secrets/db.yaml: failed SOPS's integrity check (MAC)" in said, said
        assert (
            on_host("alpha", "cat /run/orchestrate/secrets/db/password").stdout == (CANARIES["db2"])
        )
    finally:
        path.write_text(good)


def _files_containing(folder: str, needles: list[bytes]) -> list[str]:
    hits = []
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(base, d))]
        for n in names:
            p = os.path.join(base, n)
            try:
                if not os.path.isfile(p) or os.path.getsize(p) > 64_000_000:
                    continue
                with open(p, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            hits.extend(f"{p}: {x.decode()}" for x in needles if x in data)
    return hits


def test_canary_sweep_finds_no_plaintext_anywhere_but_the_target_files(
    sec: Path, rotated: object
) -> None:
    needles = [c.encode() for c in CANARIES.values()]
    assert len(needles) == 3
    # positive controls: the same search finds a planted copy, and the hosts hold the values
    planted = sec / ".orchestrate" / "planted"
    planted.write_bytes(b"x" + needles[0] + b"y")
    assert _files_containing(str(sec / ".orchestrate"), needles) == [f"{planted}: {CANARIES['db']}"]
    planted.unlink()
    assert on_host("alpha", f"grep -rl {CANARIES['token']} /run/orchestrate/").returncode == 0
    # .orchestrate holds the build, the run records with ansible-runner's artifacts, state
    assert list((sec / ".orchestrate/runs").glob("*/artifacts/artifacts/job_events/*.json"))
    assert _files_containing(str(sec / ".orchestrate"), needles) == []
    assert _files_containing(str(sec), needles) == []
    assert _files_containing("/tmp", needles) == []
    assert len(OUTPUTS) > 20 and not [o for o in OUTPUTS if any(c in o for c in CANARIES.values())]
    for h in HOSTS:
        pattern = "\\|".join(CANARIES.values())
        r = on_host(h, f"grep -rl '{pattern}' /tmp /var/tmp /root /var/log /var/lib/orchestrate")
        assert r.stdout == "", (h, r.stdout)
    # ... and the sweep reached the generations, which keep the rotated secret's ciphertext
    listed = json.loads(orchestrate(sec, "generations", "alpha", "--json").stdout)
    changed = {f["path"] for g in listed["generations"] for f in g["files"]}
    assert "/var/lib/orchestrate/secrets.json" in changed


def test_rekey_after_removing_a_host_locks_it_out(sec: Path, delivered: object) -> None:
    beta = host_identity("beta")
    (sec / "fleet.yaml").write_text(
        FLEET.replace("beta: {builder: x86_64}", "beta: {builder: x86_64, modules: [off.yaml]}")
    )
    try:
        r = orchestrate(sec, "secrets", "rekey")
        assert r.returncode == 0 and "db.yaml: +0 -1 recipient(s)" in r.stderr
        for f in (sec / "secrets").glob("*.yaml"):
            if f.name != "recipients.yaml":
                assert sops("decrypt", str(f), key=beta).returncode != 0, f
        r = orchestrate(sec, "apply", "--yes")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        assert installed("beta") == []  # its old secret is gone from the host too
    finally:  # beta back, for whichever test runs next
        (sec / "fleet.yaml").write_text(FLEET)
        back = orchestrate(sec, "secrets", "rekey")
        assert back.returncode == 0 and "db.yaml: +1 -0 recipient(s)" in back.stderr, back.stderr
        again = orchestrate(sec, "apply", "--yes")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert installed("beta") == ["./db/password nobody nogroup 440"]
