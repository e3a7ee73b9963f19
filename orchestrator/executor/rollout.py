"""An apply as a rollout: batches (`--serial`) run one after the other, each settled before the
next starts. Settling a batch: every host its apply changed is confirmed over a new SSH
connection (or, when that fails, waited for while it rolls itself back); a host whose apply
failed is rolled back, or kept as applied, as `--on-failure` says."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.executor import generations as gens
from orchestrator.executor.runner import Event, HostStats, RunRequest, RunResult, TaskResult, run
from orchestrator.naming import GENERATIONS_VAR

ON_FAILURE = ("rollback", "stop", "continue")
# the settings a change to which can cut the control node off its host
RISKY = ("services.openssh", "networking", "vpn")


@dataclass
class Rollout:
    """What became of one host: ``outcome`` is applied (a new generation), unchanged, trial,
    rolled back, failed (kept as applied), unreachable or not reached (a later batch)."""

    host: str
    outcome: str
    generation: int | None = None
    message: str = ""
    digest: str = ""  # the new generation's record, as the host reported it

    @property
    def failed(self) -> bool:
        return self.outcome in ("rolled back", "failed", "unreachable")


@dataclass(frozen=True)
class Settings:
    run_id: str
    build: str
    magic: bool
    on_failure: str
    trial: int  # seconds; 0: not a trial
    confirm_timeout: int | None  # None: each host's deploy.confirm_timeout


def build_digest(inputs: dict[str, str]) -> str:
    """The applied build, named by the digest of its inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def batches(hosts: list[str], serial: str | None) -> list[list[str]]:
    """`--serial N` or `N%`: consecutive batches, as Ansible's `serial` makes them."""
    if not serial:
        return [hosts] if hosts else []
    size = max(1, len(hosts) * int(serial[:-1]) // 100) if serial.endswith("%") else int(serial)
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


def host_vars(data: dict[str, Any], hosts: list[str], s: Settings) -> dict[str, dict[str, Any]]:
    """The variable that turns generations on, per host (its own timeout and how many kept)."""
    out = {}
    for h in hosts:
        deploy = data["hosts"][h]["deploy"]
        out[h] = {
            GENERATIONS_VAR: {
                "run": s.run_id,
                "build": s.build,
                "timeout": s.confirm_timeout or deploy.get("confirm_timeout", 30),
                "keep": deploy.get("keep_generations", 10),
                "magic": s.magic,
                "trial": s.trial,
            }
        }
    return out


@dataclass
class Context:
    root: str
    data: dict[str, Any]
    settings: Settings
    progress: Callable[[str], None]


def run_batches(
    ctx: Context,
    request: RunRequest,
    max_fail_percent: int | None,
    on_event: Callable[[Event], None],
    cancelled: threading.Event,
) -> tuple[RunResult, dict[str, Rollout]]:
    """Every batch of ``request``'s hosts in turn; stops at the first batch whose failures
    exceed ``max_fail_percent`` (or that failed whole), and at an interruption."""
    parts = batches(request.hosts, request.serial)
    total = RunResult("successful", 0, {}, [], False, "")
    rollouts: dict[str, Rollout] = {}
    for i, batch in enumerate(parts, 1):
        overrides = {h: dict(request.overrides.get(h, {})) for h in batch}
        for h, extra in host_vars(ctx.data, batch, ctx.settings).items():
            overrides[h].update(extra)
        ident = "artifacts" if i == 1 else f"artifacts-{i}"
        req = replace(request, hosts=batch, serial=None, overrides=overrides, ident=ident)
        res = run(req, on_event, cancelled)
        _merge(total, res, first=i == 1)
        if res.interrupted:
            rollouts.update(interrupted(ctx, batch))
            break
        rollouts.update(settle(ctx, batch, res))
        failed = [h for h in batch if rollouts[h].failed]
        limit = 100 if max_fail_percent is None else max_fail_percent
        if failed and (len(failed) == len(batch) or 100 * len(failed) > limit * len(batch)):
            for h in (h for later in parts[i:] for h in later):
                rollouts[h] = Rollout(h, "not reached", message="an earlier batch failed")
                total.stats.setdefault(h, HostStats())
            break
    return total, rollouts


def _merge(total: RunResult, res: RunResult, first: bool) -> None:
    total.stats.update(res.stats)
    total.tasks.extend(res.tasks)
    total.interrupted = total.interrupted or res.interrupted
    total.rc = max(total.rc, res.rc)
    if first or res.status != "successful":
        total.status = res.status
    if first:
        total.artifacts = res.artifacts


def settle(ctx: Context, batch: list[str], res: RunResult) -> dict[str, Rollout]:
    """Confirm, undo or keep each host's apply of this batch."""
    made = {t.host: t for t in res.tasks if t.task == gens.END_TASK and t.status == "changed"}
    links = gens.links(ctx.root, ctx.data, batch)
    out: dict[str, Rollout] = {}
    confirm: list[str] = []
    for h in batch:
        s = res.stats.get(h, HostStats())
        if s.unreachable:
            out[h] = Rollout(h, "unreachable", message=_first_message(res.tasks, h))
        elif s.failed:
            out[h] = _failed(ctx, links[h], res.tasks)
        elif h in made and ctx.settings.trial:
            number = made[h].returned.get("generation")
            out[h] = Rollout(
                h, "trial", number, f"reverts in {ctx.settings.trial}s unless confirmed"
            )
        elif h in made and ctx.settings.magic:
            confirm.append(h)
        elif h in made:
            got = made[h].returned
            out[h] = Rollout(h, "applied", got.get("generation"), digest=got.get("digest", ""))
        else:
            out[h] = Rollout(h, "unchanged")
    for r in gens.in_parallel(lambda h: _confirm(ctx, links[h]), confirm):
        out[r.host] = r
    return out


def interrupted(ctx: Context, batch: list[str]) -> dict[str, Rollout]:
    """A stopped apply: what it began on each host is undone now (or, with `--on-failure
    stop|continue`, kept); a host out of reach undoes it by itself."""
    links = gens.links(ctx.root, ctx.data, batch)
    verb = "revert" if ctx.settings.on_failure == "rollback" else "confirm"

    def one(h: str) -> Rollout:
        try:
            if verb == "revert":
                answer = gens.call(
                    links[h], "revert", ctx.settings.run_id, "the apply was interrupted"
                )
            else:
                answer = gens.call(links[h], "confirm", ctx.settings.run_id, stdin="[]")
        except gens.GenerationError as e:
            return Rollout(h, "failed", message=f"interrupted, and then: {e}")
        if answer.get("reverted"):
            return Rollout(h, "rolled back", answer.get("generation"), "the apply was interrupted")
        return Rollout(h, "failed", answer.get("generation"), "the apply was interrupted")

    return dict(zip(batch, gens.in_parallel(one, batch), strict=True))


def _first_message(tasks: list[TaskResult], host: str) -> str:
    for t in tasks:
        if t.host == host and t.status in ("failed", "unreachable"):
            return f"{t.task}: {t.message[:300]}"
    return ""


def _failed(ctx: Context, link: gens.Link, tasks: list[TaskResult]) -> Rollout:
    """A host whose apply failed: rolled back (the default), or kept as it is."""
    why = _first_message(tasks, link.host)
    verb = "revert" if ctx.settings.on_failure == "rollback" else "confirm"
    args = [ctx.settings.run_id, f"a task failed ({why[:120]})"] if verb == "revert" else []
    try:
        if verb == "revert":
            answer = gens.call(link, "revert", *args)
        else:
            answer = gens.call(link, "confirm", ctx.settings.run_id, stdin="[]")
    except gens.GenerationError as e:
        return Rollout(link.host, "failed", message=f"{why}; and then: {e}")
    if verb == "revert" and answer.get("reverted"):
        return Rollout(link.host, "rolled back", answer.get("generation"), f"a task failed: {why}")
    return Rollout(link.host, "failed", answer.get("generation"), why)


def _confirm(ctx: Context, link: gens.Link) -> Rollout:
    try:
        answer = gens.call(link, "confirm", ctx.settings.run_id, stdin="[]", timeout=60)
    except gens.Unreachable as e:
        return _lost(ctx, link, str(e))
    except gens.GenerationError as e:
        return Rollout(link.host, "failed", message=str(e))
    if answer.get("confirmed"):
        number = int(answer["generation"])
        return Rollout(link.host, "applied", number, digest=str(answer["digest"]))
    return Rollout(link.host, "rolled back", message=str(answer.get("state")))


def _lost(ctx: Context, link: gens.Link, error: str) -> Rollout:
    """The new connection failed: the host undoes the apply by itself once its timeout
    passes; wait until it answers again, and say what it did."""
    timeout = ctx.settings.confirm_timeout or ctx.data["hosts"][link.host]["deploy"].get(
        "confirm_timeout", 30
    )
    ctx.progress(
        f"{link.host}: not reachable over a new connection after the apply ({error}); "
        f"waiting for it to roll back by itself (within {timeout}s) ..."
    )
    back = gens.wait_back(link, None, timeout + 90)
    message = f"not reachable after apply: {error}"
    if back is None:
        return Rollout(link.host, "unreachable", message=message + "; it has not answered since")
    return Rollout(link.host, "rolled back", message=message)
