"""The one seam that says how a run reaches its hosts and what machine-local values it
carries: testbed containers instead of deploy addresses, the sops binary for each host's
architecture and a host's new private key until an apply installs it. plan, apply, image builds
and `secrets host-key --from-host` all take their connection settings from here."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from orchestrator.naming import SECRETS_GROUP
from orchestrator.paths import state_dir
from orchestrator.secrets.sops import binary_for
from orchestrator.secrets.store import pending_key
from orchestrator.testbed.manager import TestbedHost, known_hosts_path, load_record, restart

Progress = Callable[[str], None]
# a container started before the testbed knew its host key: reached without checking it
UNCHECKED_SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


def connection_overrides(
    root: str, hosts: list[str], progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Connection variables that send hosts to their testbed containers, when there is one."""
    record = load_record(state_dir(root))
    if not record:
        return {}
    if progress is not None:
        progress(
            f"testbed: reaching {len(record)} host(s) through .orchestrate/testbed.json "
            "instead of their deploy addresses"
        )
        old = sorted(h for h, t in record.items() if h in hosts and not t.host_key)
        if old:
            progress(
                f"testbed: {', '.join(old)} started before the testbed knew host keys: reached "
                "without checking them (`orchestrate testbed down` and `up` to check them)"
            )
    known = known_hosts_path(state_dir(root))
    return {h: _testbed_vars(t, known) for h, t in record.items() if h in hosts}


def _testbed_vars(t: TestbedHost, known_hosts: str) -> dict[str, Any]:
    """A container's connection: its published port and the testbed's keys, its host key
    checked against the testbed's known_hosts as SSH checks a real host's."""
    checked = (
        f"-o UserKnownHostsFile={shlex.quote(known_hosts)} -o StrictHostKeyChecking=yes"
        " -o LogLevel=ERROR"
    )
    out: dict[str, Any] = {
        "ansible_host": t.address,
        "ansible_port": t.port,
        "ansible_user": t.user,
        "ansible_ssh_private_key_file": t.private_key,
        "ansible_ssh_common_args": checked if t.host_key else UNCHECKED_SSH_ARGS,
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    if not t.host_key:
        out["ansible_host_key_checking"] = False  # Mitogen's SSH would insist otherwise
    return out


def secrets_overrides(
    root: str, data: dict[str, Any], hosts: list[str], progress: Progress
) -> dict[str, dict[str, Any]]:
    """Machine-local inputs of the secrets role: the sops binary for each host's architecture
    and, for a host whose key was just made, the key file that its apply installs."""
    delivered = set(data["groups"].get(SECRETS_GROUP, [])) & set(hosts)
    out: dict[str, dict[str, Any]] = {}
    binaries: dict[str, str] = {}
    for h in sorted(delivered):
        arch = data["hosts"][h]["arch"]
        if arch not in binaries:
            binaries[arch] = binary_for(arch, progress)
        out[h] = {"orchestrate_sops_binary": binaries[arch]}
        key = pending_key(root, h)
        if key:
            out[h]["orchestrate_pending_key"] = key
    return out


def run_overrides(
    root: str, data: dict[str, Any], hosts: list[str], progress: Progress
) -> dict[str, dict[str, Any]]:
    """Everything a run of ``hosts`` sets per host beyond the build: connection and secrets."""
    overrides = connection_overrides(root, hosts, progress)
    for h, extra in secrets_overrides(root, data, hosts, progress).items():
        overrides.setdefault(h, {}).update(extra)
    return overrides


def restart_testbed_host(root: str, host: str, deploy_address: str) -> bool:
    """Reboot ``host`` the testbed's way (its container restarted) when it is a testbed host;
    False when it is not (a real host reboots itself)."""
    return restart(state_dir(root), host, deploy_address)
