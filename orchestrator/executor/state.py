"""Last-applied state per host and run records under `.orchestrate/` (written atomically)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from orchestrator.fsutil import atomic_json


def state_dir(root: str) -> str:
    return os.path.join(root, ".orchestrate")


def host_state_path(root: str, host: str) -> str:
    return os.path.join(state_dir(root), "state", f"{host}.json")


def load_host_state(root: str, host: str) -> dict[str, Any] | None:
    try:
        with open(host_state_path(root, host), encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (FileNotFoundError, ValueError):
        return None


def save_host_state(
    root: str, host: str, config: dict[str, Any], run_id: str, inputs: dict[str, str]
) -> None:
    atomic_json(
        host_state_path(root, host),
        {
            "host": host,
            "config": config,
            "run": run_id,
            "applied_at": int(time.time()),
            "inputs": inputs,
        },
    )


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
