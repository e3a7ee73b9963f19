"""Generations seen from the control node: the variables that turn them on in an apply, the
new SSH connection that confirms an apply (or undoes it), `generations` and `rollback`, and
what this control node remembers of each host's generations (their digests, to refuse a
record changed on the host, and the configuration each one holds, for the next plan)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import OrchestrateError
from orchestrator.executor.connection import connection_overrides
from orchestrator.fsutil import atomic_json, load_state_json
from orchestrator.paths import state_dir
from orchestrator.proc import run as run_command

SCRIPT = "/var/lib/orchestrate/generation.py"
# the tasks of the orchestrate_generations role, as their results name them
END_TASK = "Record this apply's generation"


class GenerationError(OrchestrateError):
    """A host refused or could not do what was asked of its generations."""


@dataclass(frozen=True)
class Link:
    """How to reach a host over a connection of its own: never a multiplexed master that a
    run opened, always the settings the fleet compiles now (or the testbed's)."""

    host: str
    address: str
    port: int
    user: str
    key: str | None
    args: tuple[str, ...]
    become: bool

    def argv(self, *command: str) -> list[str]:
        opts = ["BatchMode=yes", "ControlMaster=no", "ControlPath=none", "ConnectTimeout=8"]
        opts += ["ServerAliveInterval=5", "ServerAliveCountMax=2"]
        out = ["ssh", *(x for o in opts for x in ("-o", o)), "-p", str(self.port)]
        out += ["-i", self.key] if self.key else []
        out += [*self.args, f"{self.user}@{self.address}", "--"]
        remote = (["sudo", "-n"] if self.become else []) + ["python3", SCRIPT, *command]
        return [*out, " ".join(shlex.quote(w) for w in remote)]


def links(root: str, data: dict[str, Any], hosts: list[str]) -> dict[str, Link]:
    overrides = connection_overrides(root, hosts)
    out = {}
    for h in hosts:
        deploy = data["hosts"][h]["deploy"]
        o = overrides.get(h, {})
        user = str(o.get("ansible_user", deploy["user"]))
        out[h] = Link(
            h,
            str(o.get("ansible_host", deploy["host"])),
            int(o.get("ansible_port", deploy["port"])),
            user,
            o.get("ansible_ssh_private_key_file"),
            tuple(shlex.split(str(o.get("ansible_ssh_common_args", "")))),
            user != "root",
        )
    return out


class Unreachable(GenerationError):
    """SSH could not reach the host (the words are ssh's own)."""


def call(link: Link, *command: str, stdin: str | None = None, timeout: float = 120) -> Any:
    """Run the host's generation script over a new connection; its JSON answer."""
    try:
        done = run_command(link.argv(*command), None, timeout=timeout, input=stdin)
    except Exception as e:  # a timeout: the host accepted and then went silent
        raise Unreachable(f"no answer over SSH ({type(e).__name__})") from None
    if done.returncode == 255:
        said = done.stderr.strip().splitlines()
        raise Unreachable(said[-1] if said else "ssh failed")
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr.strip() or done.stdout.strip())[-300:]
        raise GenerationError(f"the generation script did not answer ({tail})") from None
    if isinstance(answer, dict) and "error" in answer:
        raise GenerationError(str(answer["error"]))
    return answer


def in_parallel(fn: Any, items: list[Any]) -> list[Any]:
    """``fn`` of each item, side by side (SSH connections wait, they do not compute)."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def wait_back(link: Link, fallback: Link | None, timeout: float) -> Link | None:
    """Poll until the host answers again (on ``link``, else ``fallback``); the link that did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for candidate in (link, fallback):
            if candidate is None:
                continue
            try:
                call(candidate, "list", timeout=15)
                return candidate
            except GenerationError:
                pass
        time.sleep(1)
    return None


# -- what the control node remembers --------------------------------------------------------------


def history_path(root: str, host: str) -> str:
    return os.path.join(state_dir(root), "generations", f"{host}.json")


def load_history(root: str, host: str) -> dict[str, Any]:
    path = history_path(root, host)
    data = load_state_json(path, dict, "remove it; the host's generations stay on the host")
    return data if data is not None else {"host": host, "generations": {}}


def remember(root: str, host: str, number: int, digest: str, entry: dict[str, Any]) -> None:
    """Generation ``number`` of ``host``: its digest and the last-applied state it holds."""
    hist = load_history(root, host)
    hist["generations"][str(number)] = {"digest": digest, **entry}
    os.makedirs(os.path.dirname(history_path(root, host)), mode=0o700, exist_ok=True)
    atomic_json(history_path(root, host), hist)


def checked_listing(root: str, link: Link) -> dict[str, Any]:
    """The host's generations, each marked with whether this control node knows its digest;
    a record whose digest differs from the one remembered is refused."""
    listing: dict[str, Any] = call(link, "list")
    known = load_history(root, link.host)["generations"]
    for g in listing["generations"]:
        mine = known.get(str(g["number"]))
        if "error" in g:
            raise GenerationError(str(g["error"]))
        if mine is not None and mine["digest"] != g["digest"]:
            raise GenerationError(
                f"generation {g['number']}'s record differs from the one this "
                "control node saw made (it was changed on the host); refusing to use it"
            )
        g["known"] = mine is not None
    return listing


def state_at(root: str, host: str, number: int) -> tuple[bool, dict[str, Any] | None]:
    """Whether this control node knows the last-applied state that generation ``number``
    holds, and that state (None: never applied)."""
    gens = load_history(root, host)["generations"]
    if str(number) in gens:
        return True, gens[str(number)].get("state")
    after = gens.get(str(number + 1))
    if after is not None:
        return True, after.get("previous")
    return number == 0 and not gens, None


# -- the commands ---------------------------------------------------------------------------------


def trial_path(root: str, host: str) -> str:
    return os.path.join(state_dir(root), "trials", f"{host}.json")


def save_trial(root: str, host: str, trial: dict[str, Any]) -> None:
    """An apply on trial: what becomes the host's last-applied state once it is confirmed."""
    os.makedirs(os.path.dirname(trial_path(root, host)), mode=0o700, exist_ok=True)
    atomic_json(trial_path(root, host), trial)


def load_trial(root: str, host: str) -> dict[str, Any] | None:
    data: dict[str, Any] | None = load_state_json(trial_path(root, host), dict, "remove it")
    return data


def drop_trial(root: str, host: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(trial_path(root, host))
