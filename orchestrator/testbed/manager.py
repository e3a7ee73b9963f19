"""`orchestrate testbed up|down|status`: containers for a fleet's hosts, recorded in
`.orchestrate/testbed.json`; while the record exists, runs reach the hosts through it."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from orchestrator.errors import display_path
from orchestrator.fsutil import CorruptState, atomic_write, load_state_json
from orchestrator.naming import DEBIAN_ARCH
from orchestrator.proc import run
from orchestrator.testbed.images import TestbedError, podman, preloaded_image
from orchestrator.testbed.packages import Preload
from orchestrator.testbed.roots import image_root_dir, release

RECORD = "testbed.json"
HOST_KEY = "ssh_host_ed25519_key"
# where the testbed's host key is mounted: the entrypoint makes this key only when it is
# missing, and sshd presents no other
CONTAINER_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
FIRST_PORT = 22001
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TestbedHost:
    container: str
    address: str
    port: int
    user: str
    private_key: str
    arch: str
    # the public host key its sshd presents (the testbed's own, made on this machine), checked
    # on every connection; empty in a record of a container started before it was given one
    host_key: str = ""


def record_path(state_dir: str) -> str:
    return os.path.join(state_dir, RECORD)


def load_record(state_dir: str) -> dict[str, TestbedHost]:
    path = record_path(state_dir)
    fix = "remove the testbed's containers (podman ps) and then this file"
    data = load_state_json(path, dict, fix)
    if data is None:
        return {}
    try:
        return {name: TestbedHost(**h) for name, h in data.get("hosts", {}).items()}
    except (TypeError, AttributeError):
        raise CorruptState(
            f"{display_path(path)} is corrupt (not a testbed record); {fix}"
        ) from None


def save_record(state_dir: str, hosts: dict[str, TestbedHost]) -> None:
    os.makedirs(state_dir, exist_ok=True)
    record = {"hosts": {n: asdict(h) for n, h in sorted(hosts.items())}}
    atomic_write(record_path(state_dir), json.dumps(record, indent=2, sort_keys=True).encode())
    known = [(h.address, h.port, h.host_key) for h in hosts.values() if h.host_key]
    os.makedirs(os.path.dirname(known_hosts_path(state_dir)), mode=0o700, exist_ok=True)
    atomic_write(known_hosts_path(state_dir), known_hosts_text(known).encode())


def known_hosts_text(entries: list[tuple[str, int, str]]) -> str:
    """known_hosts lines for (address, port, public host key) entries, as ssh writes them for
    a port other than 22, sorted."""
    return "".join(sorted(f"[{address}]:{port} {key}\n" for address, port, key in entries))


def known_hosts_path(state_dir: str) -> str:
    """The testbed's known_hosts: each container's address and port with its host key, so
    that connections check host keys as they would on real hosts."""
    return os.path.join(state_dir, "testbed", "known_hosts")


def container_name(fleet: str, host: str, state_dir: str) -> str:
    """Unique per fleet folder, so two checkouts of one fleet keep their own containers."""
    where = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:6]
    return f"orch-{fleet}-{where}-" + re.sub(r"[^a-z0-9_.-]", "-", host.lower())


def testbed_key(state_dir: str, name: str = "id_ed25519") -> tuple[str, str]:
    """A key pair of the testbed's, made once: ``id_ed25519`` logs in to every container,
    ``ssh_host_ed25519_key`` is the host key every container's sshd presents."""
    folder = os.path.join(state_dir, "testbed")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = os.path.join(folder, name)
    if not os.path.exists(key):
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrate-testbed", "-f", key],
            lambda r: TestbedError(f"ssh-keygen failed: {r.stderr.strip()[-400:]}"),
        )
    with open(key + ".pub", encoding="utf-8") as fh:
        # the key without its comment: what known_hosts and authorized_keys lines hold
        return key, " ".join(fh.read().split()[:2])


def free_ports(taken: set[int]) -> Iterator[int]:
    """Ports from FIRST_PORT, each one nothing listens on, no port forward claims and not in
    ``taken`` (nor handed out before): a forward outlives a container whose podman monitor was
    killed (a hard-stopped session), and a new container published on its port would never be
    reached. The NAT table is read once."""
    skip = taken | forwarded_ports()
    port = FIRST_PORT
    while True:
        if port not in skip:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    port += 1
                    continue
            skip.add(port)
            yield port
        port += 1


def forwarded_ports() -> set[int]:
    """The TCP ports the kernel's NAT table sends elsewhere (podman's published ports), or
    nothing where the table cannot be read (no iptables, not root)."""
    try:
        done = run(["iptables-save", "-t", "nat"], None, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if done.returncode != 0:
        return set()
    return forwards_in(done.stdout)


def forwards_in(rules: str) -> set[int]:
    """The destination ports of the DNAT rules in ``iptables-save`` output."""
    return {
        int(m.group(1))
        for line in rules.splitlines()
        if "-j DNAT" in line
        for m in [re.search(r"--dport (\d+)\b", line)]
        if m
    }


def up(
    state_dir: str,
    fleet: str,
    hosts: dict[str, str],
    suite: str,
    progress: Progress,
    ssh_ports: dict[str, int] | None = None,
    deploy_addresses: dict[str, str] | None = None,
    builders: set[str] | None = None,
    preload: dict[str, Preload] | None = None,
) -> dict[str, TestbedHost]:
    """Start a container per host (``hosts`` maps name -> arch); reuse running ones. sshd in
    a container listens on the host's deploy port (``ssh_ports``, else 22), published on a free
    port of 127.0.0.1. Each container also answers at its host's IPv4 deploy address on the
    podman bridge (``deploy_addresses``), so services that reach each other at those
    addresses (scrape targets, proxy upstreams) work inside the testbed. Hosts in ``builders``
    build their own images (deploy.build_on: remote): their containers run privileged, since
    the image builder makes namespaces, a tap device and chroots there. With ``preload``
    (arch -> what to install) the containers start from an image that has it installed."""
    record = load_record(state_dir)
    key, pub = testbed_key(state_dir)
    host_key, host_pub = testbed_key(state_dir, HOST_KEY)
    images = {
        arch: preloaded_image(arch, suite, (preload or {}).get(arch), progress)
        for arch in sorted(set(hosts.values()))
    }
    ports = free_ports({h.port for h in record.values()})
    started = []
    for name, arch in sorted(hosts.items()):
        cname = container_name(fleet, name, state_dir)
        if name in record and _running(cname):
            continue
        podman("rm", "-f", cname, check=False)
        release(image_root_dir(state_dir, name))  # it ran from an image before
        port = next(ports)
        inner = (ssh_ports or {}).get(name, 22)
        box = _Container(cname, name, arch, port, inner, pub, host_key, name in (builders or set()))
        podman(*box.run_args(fleet, images[arch]))
        record[name] = TestbedHost(cname, "127.0.0.1", port, "root", key, arch, host_pub)
        started.append(name)
        save_record(state_dir, record)
    progress(f"started {len(started)} container(s); waiting for sshd ...")
    wait_ssh([record[n] for n in started])
    bridge_addresses(record, deploy_addresses or {})
    return record


@dataclass(frozen=True)
class _Container:
    """One host's container as `podman run` starts it: sshd listens on ``ssh_port`` inside,
    published on 127.0.0.1:``port``, and lets in the testbed's ``public_key``."""

    name: str
    host: str
    arch: str
    port: int
    ssh_port: int
    public_key: str
    host_key: str  # the private host key file its sshd is to present
    privileged: bool  # the host builds its own images (namespaces, a tap device, chroots)

    def run_args(self, fleet: str, image: str) -> list[str]:
        return [
            "run",
            "-d",
            "--name",
            self.name,
            "--hostname",
            self.host,
            "--arch",
            DEBIAN_ARCH[self.arch],  # podman names architectures as Debian does
            "-p",
            f"127.0.0.1:{self.port}:{self.ssh_port}",
            "-e",
            f"AUTHORIZED_KEY={self.public_key}",
            "-e",
            f"SSH_PORT={self.ssh_port}",
            "-v",
            f"{self.host_key}:{CONTAINER_HOST_KEY}:ro",
            # the firewall role loads nftables rules inside the container's own network
            "--cap-add",
            "NET_ADMIN",
            # as on a booted host, for Debian's init scripts: an init that reaps orphans (a
            # script that stops a daemon waits for its process to disappear), and root able
            # to read other users' /proc/PID/exe (how the scripts find the daemon)
            "--init",
            "--cap-add",
            "SYS_PTRACE",
            *(["--privileged"] if self.privileged else []),
            "--label",
            f"orchestrate.fleet={fleet}",
            image,
        ]


def bridge_addresses(record: dict[str, TestbedHost], deploy: dict[str, str]) -> None:
    """Give each container its IPv4 deploy address on its bridge interface, and every container
    an on-link route to the others' (idempotent: ``replace``). Traffic stays on the bridge."""
    wanted = {n: a for n, a in deploy.items() if n in record and _is_ipv4(a)}
    for name, h in sorted(record.items()):
        script = ["dev=$(ip -o route show default | awk '{print $5; exit}')"]
        for other, address in sorted(wanted.items()):
            verb = "addr replace" if other == name else "route replace"
            script.append(f'ip {verb} {address}/32 dev "$dev"')
        if len(script) > 1:
            out = podman("exec", h.container, "sh", "-ec", "\n".join(script), check=False)
            if out.returncode != 0:
                raise TestbedError(
                    f"could not give {h.container} the fleet's deploy addresses: "
                    f"{out.stderr.strip()}"
                )


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _running(cname: str) -> bool:
    out = podman("inspect", "-f", "{{.State.Running}}", cname, check=False)
    return out.returncode == 0 and out.stdout.strip() == "true"


def wait_ssh(hosts: list[TestbedHost], timeout: float = 180) -> None:
    """Wait until every host's sshd sends its banner; fail at once, with the container's last
    log lines, when a container has stopped (its sshd will never answer)."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    rounds = 0
    while pending and time.monotonic() < deadline:
        pending = [h for h in pending if not answers(h)]
        rounds += 1
        for h in pending if rounds % 10 == 0 else []:  # podman inspect costs: every 5 s
            if not _running(h.container):
                logs = podman("logs", "--tail", "5", h.container, check=False)
                tail = (logs.stdout + logs.stderr).strip()[-600:]
                raise TestbedError(f"{h.container} stopped before its sshd answered: {tail}")
        if pending:
            time.sleep(0.5)
    if pending:
        names = ", ".join(h.container for h in pending)
        raise TestbedError(f"sshd did not answer within {timeout:.0f}s on {names}")


def answers(h: TestbedHost) -> bool:
    """Whether sshd on the host speaks SSH (its banner), not merely accepts a connection."""
    return speaks_ssh(h.address, h.port, 2)


def speaks_ssh(address: str, port: int, timeout: float) -> bool:
    """Whether what listens at address:port sends an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def status(state_dir: str) -> list[tuple[str, TestbedHost, bool, bool]]:
    """(host, record, container running, sshd answering) for each recorded host."""
    out = []
    for name, h in sorted(load_record(state_dir).items()):
        running = _running(h.container)
        out.append((name, h, running, running and answers(h)))
    return out


def restart(state_dir: str, host: str, deploy_address: str | None) -> bool:
    """A testbed host's reboot: its container restarted, waited for until sshd answers, its
    deploy address given back. False when the host has no container here."""
    record = load_record(state_dir)
    h = record.get(host)
    if h is None:
        return False
    podman("restart", "-t", "2", h.container, check=False)
    wait_ssh([h])
    bridge_addresses({host: h}, {host: deploy_address} if deploy_address else {})
    return True


def down(state_dir: str) -> list[str]:
    """Remove every recorded container and the record."""
    record = load_record(state_dir)
    for name, h in record.items():
        podman("rm", "-f", "-t", "1", h.container, check=False)
        release(image_root_dir(state_dir, name))  # a root filesystem copied out of an image
    with contextlib.suppress(FileNotFoundError):
        os.remove(record_path(state_dir))
    return sorted(record)


__all__ = ["TestbedError", "TestbedHost", "down", "load_record", "status", "up"]
