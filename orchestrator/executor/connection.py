"""The one seam that says how a run reaches its hosts and what machine-local values it
carries: testbed containers instead of deploy addresses, the sops binary for each host's
architecture and a host's new private key until an apply installs it. plan, apply, image builds
and `secrets host-key --from-host` all take their connection settings from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.naming import SECRETS_GROUP
from orchestrator.paths import state_dir
from orchestrator.secrets.sops import binary_for
from orchestrator.secrets.store import pending_key
from orchestrator.testbed.manager import load_record

Progress = Callable[[str], None]
TESTBED_SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


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
    return {
        h: {
            "ansible_host": t.address,
            "ansible_port": t.port,
            "ansible_user": t.user,
            "ansible_ssh_private_key_file": t.private_key,
            "ansible_ssh_common_args": TESTBED_SSH_ARGS,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        for h, t in record.items()
        if h in hosts
    }


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
