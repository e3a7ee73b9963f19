"""`orchestrate test [ROLE]`: molecule scenarios of the shipped roles (and the fleet's own), in
podman containers made from the testbed's locally built image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import yaml

from orchestrator import strategy
from orchestrator.errors import UsageError
from orchestrator.paths import shipped_roles_dir
from orchestrator.testbed.images import podman, podman_env, ssh_image
from orchestrator.testbed.manager import HOST_KEY, free_ports, known_hosts_text, testbed_key


@dataclass
class RoleTest:
    role: str
    folder: str
    passed: bool
    seconds: float
    log: str


def testable_roles(fleet_root: str | None) -> dict[str, str]:
    """Role name -> folder, for roles with a molecule/ folder; the fleet's own win."""
    found: dict[str, str] = {}
    dirs = [shipped_roles_dir()]
    if fleet_root:
        dirs.insert(0, os.path.join(fleet_root, "roles"))
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if os.path.isdir(os.path.join(d, name, "molecule")):
                found.setdefault(name, os.path.join(d, name))
    return found


def run_tests(
    fleet_root: str | None,
    roles: list[str],
    logs: str,
    progress: Callable[[str], None],
    jobs: int = 1,
) -> list[RoleTest]:
    available = testable_roles(fleet_root)
    chosen = roles or sorted(available)
    unknown = [r for r in chosen if r not in available]
    if unknown:
        raise UsageError(
            f"no molecule scenario for {', '.join(unknown)} "
            f"(roles with one: {', '.join(sorted(available)) or 'none'})"
        )
    ssh_image("x86_64", "bookworm", progress)
    os.makedirs(logs, exist_ok=True)
    env = {**podman_env(), "ANSIBLE_NOCOLOR": "1", "PY_COLORS": "0", "ANSIBLE_FORCE_COLOR": "0"}
    work = tempfile.mkdtemp(prefix="orchestrate-molecule-")
    ports = _ports(chosen)
    shared = _run_env(work, ports)

    def one(role: str) -> RoleTest:
        progress(f"{role}: molecule test (check, converge, idempotence, verify) ...")
        start = time.monotonic()
        log = os.path.join(logs, f"{role}.log")
        _remove_leftovers(available[role])
        # the instance's sshd: the scenarios reach it over SSH, as the fleet's hosts are reached
        scenario_env = {
            # a working folder of this run's own: molecule names its default one after the
            # role folder's name only, which two checkouts (or two runs) would share
            "MOLECULE_EPHEMERAL_DIRECTORY": os.path.join(work, role),
            "ORCHESTRATE_MOLECULE_PORT": str(ports[role]),
            **shared,
        }
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "molecule", "test"],
                cwd=available[role],
                env={**env, **scenario_env},
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        took = time.monotonic() - start
        progress(f"{role}: {'passed' if proc.returncode == 0 else 'FAILED'} in {took:.0f}s")
        return RoleTest(role, available[role], proc.returncode == 0, took, log)

    # scenarios name their own instances and keep their own state: they can run side by side
    # (most of a scenario's time is apt downloads and waits, not CPU)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, chosen))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_env(work: str, ports: dict[str, int]) -> dict[str, str]:
    """What every scenario of a run reads: the run's login key, the host key each instance's
    sshd presents with the known_hosts that lists it at each port, and where Mitogen is."""
    key, pub = testbed_key(work)
    host_key, host_pub = testbed_key(work, HOST_KEY)
    known_hosts = os.path.join(work, "known_hosts")
    with open(known_hosts, "w", encoding="utf-8") as fh:
        fh.write(known_hosts_text([("127.0.0.1", port, host_pub) for port in ports.values()]))
    return {
        "ORCHESTRATE_MOLECULE_KEY": key,
        "ORCHESTRATE_MOLECULE_PUBKEY": pub,
        "ORCHESTRATE_MOLECULE_HOST_KEY": host_key,
        "ORCHESTRATE_MOLECULE_KNOWN_HOSTS": known_hosts,
        "ORCHESTRATE_MOLECULE_STRATEGY_PLUGINS": strategy.plugin_dir(),
    }


def _remove_leftovers(folder: str) -> None:
    """Instances an interrupted run left behind: removed here, in one podman call, so that the
    scenarios need not begin with molecule's own destroy (a playbook run of several seconds)."""
    try:
        with open(os.path.join(folder, "molecule", "default", "molecule.yml"), "rb") as fh:
            scenario = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return  # molecule reports a scenario it cannot read, in the role's log
    platforms = scenario.get("platforms") if isinstance(scenario, dict) else None
    listed = platforms if isinstance(platforms, list) else []
    names = [str(p["name"]) for p in listed if isinstance(p, dict) and p.get("name")]
    if names:
        podman("rm", "-f", *names, check=False)


def _ports(roles: list[str]) -> dict[str, int]:
    """A free port of 127.0.0.1 for each scenario's sshd (scenarios run side by side)."""
    ports = free_ports(set())
    return {role: next(ports) for role in roles}
