"""Last-applied state per host and run records under `.orchestrate/` (written atomically)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from orchestrator.errors import display_path
from orchestrator.fsutil import CorruptState, atomic_json, load_state_json
from orchestrator.paths import state_dir as state_dir  # where the records live


def host_state_path(root: str, host: str) -> str:
    return os.path.join(state_dir(root), "state", f"{host}.json")


def load_host_state(root: str, host: str) -> dict[str, Any] | None:
    """What the last successful apply recorded for ``host``; None when it was never applied."""
    path = host_state_path(root, host)
    fix = f"remove it, and {host} is treated as never applied through orchestrate"
    data: dict[str, Any] | None = load_state_json(path, dict, fix)
    if data is not None and not isinstance(data.get("config"), dict):
        raise CorruptState(f"{display_path(path)} is corrupt (it records no configuration); {fix}")
    return data


def host_record(
    host: str, config: dict[str, Any], roles: list[str], run_id: str, inputs: dict[str, str]
) -> dict[str, Any]:
    """What a successful apply records: the configuration and the roles it ran (so that a later
    plan can say which roles stopped running)."""
    return {
        "host": host,
        "config": config,
        "roles": roles,
        "run": run_id,
        "applied_at": int(time.time()),
        "inputs": inputs,
    }


def save_host_state(
    root: str,
    host: str,
    config: dict[str, Any],
    roles: list[str],
    run_id: str,
    inputs: dict[str, str],
) -> None:
    """Record a successful apply (:func:`host_record`)."""
    atomic_json(host_state_path(root, host), host_record(host, config, roles, run_id, inputs))


def put_host_state(root: str, host: str, record: dict[str, Any] | None) -> None:
    """Make ``record`` the host's last-applied state (None: as if never applied), as a
    rollback does with the state of the generation it restored."""
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(host_state_path(root, host))
    else:
        atomic_json(host_state_path(root, host), record)


def new_run_dir(root: str, mode: str) -> tuple[str, str]:
    runs = os.path.join(state_dir(root), "runs")
    os.makedirs(runs, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    n = 0
    while True:
        run_id = f"{stamp}-{mode}" + (f"-{n}" if n else "")
        path = os.path.join(runs, run_id)
        try:
            os.mkdir(path, 0o700)
            return run_id, path
        except FileExistsError:
            n += 1


def write_summary(run_dir: str, summary: dict[str, Any]) -> None:
    atomic_json(os.path.join(run_dir, "summary.json"), summary)
