"""`orchestrate testbed up --from-image NAME`: run a built image's root filesystem as a testbed
container, booted by its own systemd, so that a plan or an apply reaches a machine made from the
image without a virtual machine.

The image file is never changed: its root partition is copied out (sparse), the copy is
loop-mounted (a single file system: no partition nodes needed), and the container runs on it.
Two things differ from a boot on hardware, both in the copy only: the testbed's SSH key is
authorised for root (as in every testbed container), and systemd-networkd is masked, since
podman already configured the container's network."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from orchestrator.naming import DEBIAN_ARCH
from orchestrator.testbed.images import TestbedError, podman
from orchestrator.testbed.manager import (
    Progress,
    TestbedHost,
    bridge_addresses,
    container_name,
    free_ports,
    load_record,
    save_record,
    testbed_key,
    wait_ssh,
)
from orchestrator.testbed.roots import image_root_dir, release, run_tool


def _mount_root(image_file: str, work: str) -> str:
    """Copy the image's last partition (the ext4 root) out and loop-mount the copy."""
    release(work)
    os.makedirs(work, mode=0o700)
    raw = os.path.join(work, "disk.raw")
    run_tool("qemu-img", "convert", "-O", "raw", image_file, raw)
    table = json.loads(run_tool("sfdisk", "--json", raw))["partitiontable"]
    root = table["partitions"][-1]
    copy = os.path.join(work, "root.img")
    run_tool(
        "dd", f"if={raw}", f"of={copy}", "bs=512", f"skip={root['start']}",
        f"count={root['size']}", "conv=sparse", "status=none",
    )  # fmt: skip
    os.unlink(raw)
    mnt = os.path.join(work, "root")
    os.makedirs(mnt)
    run_tool("mount", "-o", "loop", copy, mnt)
    return mnt


def up_from_image(
    state_dir: str,
    fleet: str,
    images: dict[str, tuple[str, str]],
    progress: Progress,
    ssh_ports: dict[str, int],
    deploy_addresses: dict[str, str],
) -> dict[str, TestbedHost]:
    """Start one container per host from its image file (``images``: host -> (file, arch)),
    replacing the host's testbed container if it has one."""
    record = load_record(state_dir)
    key, pub = testbed_key(state_dir)
    ports = free_ports({h.port for n, h in record.items() if n not in images})
    started = []
    roots = {}
    for host, (image_file, arch) in sorted(images.items()):
        cname = container_name(fleet, host, state_dir)
        podman("rm", "-f", "-t", "1", cname, check=False)
        work = image_root_dir(state_dir, host)
        progress(f"{host}: copying the root filesystem out of {os.path.relpath(image_file)}")
        mnt = roots[host] = _mount_root(image_file, work)
        ssh = os.path.join(mnt, "root", ".ssh")
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        with open(os.path.join(ssh, "authorized_keys"), "a", encoding="utf-8") as fh:
            fh.write(pub.strip() + "\n")
        os.chmod(os.path.join(ssh, "authorized_keys"), 0o600)
        masked = os.path.join(mnt, "etc", "systemd", "system", "systemd-networkd.service")
        if os.path.lexists(masked):
            os.unlink(masked)
        os.symlink("/dev/null", masked)
        port = next(ports)
        inner = ssh_ports.get(host, 22)
        podman(
            "run", "-d", "--name", cname, "--hostname", host,
            "--arch", DEBIAN_ARCH[arch],
            "-p", f"127.0.0.1:{port}:{inner}",
            "--systemd=always", "--cap-add", "NET_ADMIN",
            # the image's own host name and hosts file, not podman's
            "--no-hosts", "-v", f"{os.path.join(mnt, 'etc', 'hostname')}:/etc/hostname",
            "--label", f"orchestrate.fleet={fleet}",
            "--rootfs", mnt, "/sbin/init",
        )  # fmt: skip
        record[host] = TestbedHost(cname, "127.0.0.1", port, "root", key, arch)
        started.append(host)
        save_record(state_dir, record)
    progress(f"booting {len(started)} image(s) under systemd; waiting for sshd ...")
    wait_ssh([record[n] for n in started])
    for host in started:
        # the image made its host key at first boot (or carries the host's own): read it
        # from the root filesystem the container runs, so that connections check it
        record[host] = replace(record[host], host_key=_host_key(roots[host]))
    save_record(state_dir, record)
    bridge_addresses(record, deploy_addresses)
    return record


def _host_key(root: str) -> str:
    """The ed25519 host key (type and key, no comment) in the root filesystem ``root``."""
    path = os.path.join(root, "etc", "ssh", "ssh_host_ed25519_key.pub")
    try:
        # no link out of the image's root: O_NOFOLLOW on the file, the folders are the image's
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as fh:
            words = fh.read(4096).split()
    except (OSError, UnicodeDecodeError) as exc:
        raise TestbedError(f"the image booted without a readable SSH host key ({exc})") from None
    if len(words) < 2 or not words[0].startswith("ssh-ed25519"):
        raise TestbedError("the image's SSH host key is not an ed25519 public key")
    return " ".join(words[:2])


__all__ = ["image_root_dir", "release", "up_from_image"]
