"""An apply as a rollout: batches (`--serial`) run one after the other, each settled before the
next starts. Settling a batch: every host its apply changed is confirmed over a new SSH
connection (or, when that fails, waited for while it rolls itself back); a host whose apply
failed is rolled back, or kept as applied, as `--on-failure` says."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator.executor import checks as health
from orchestrator.executor import generations as gens
from orchestrator.executor.connection import restart_testbed_host
from orchestrator.executor.runner import Event, HostStats, RunRequest, RunResult, TaskResult, run
from orchestrator.naming import GENERATIONS_VAR

ON_FAILURE = ("rollback", "stop", "continue")
# the settings a change to which can cut the control node off its host
RISKY = ("services.openssh", "networking", "vpn")


@dataclass
class Rollout:
    """What became of one host: ``outcome`` is applied (a new generation), unchanged, trial,
    rolled back, failed (kept as applied), unhealthy (applied, a check failed, kept as
    `--on-failure stop|continue` says), unreachable or not reached (a later batch)."""

    host: str
    outcome: str
    generation: int | None = None
    message: str = ""
    digest: str = ""  # the new generation's record, as the host reported it
    checks: list[dict[str, Any]] = field(default_factory=list)  # name, passed, output, seconds
    rebooted: bool = False
    # seconds from the failed confirmation to the host answering again (after rolling back)
    recovered: float | None = None

    @property
    def failed(self) -> bool:
        return self.outcome in ("rolled back", "failed", "unhealthy", "unreachable")


@dataclass(frozen=True)
class Settings:
    run_id: str
    build: str
    magic: bool
    on_failure: str
    trial: int  # seconds; 0: not a trial
    confirm_timeout: int | None  # None: each host's deploy.confirm_timeout
    reboot: str | None = None  # needed (when the host asks) | always (every changed host)
    generations: bool = True  # False: the hosts keep none, and nothing is confirmed


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
    out: dict[str, dict[str, Any]] = {}
    if not s.generations:
        return out
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
            if ctx.settings.generations:
                rollouts.update(interrupted(ctx, batch))
            break
        rollouts.update(settle(ctx, batch, res))
        failed = [h for h in batch if rollouts[h].failed]
        limit = 100 if max_fail_percent is None else max_fail_percent
        whole = len(failed) == len(batch) or ctx.settings.on_failure == "stop"
        if failed and (whole or 100 * len(failed) > limit * len(batch)):
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
        elif s.failed and not ctx.settings.generations:
            out[h] = Rollout(h, "failed", message=_first_message(res.tasks, h))
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
    applied = [r for r in out.values() if r.outcome == "applied"]
    for r in gens.in_parallel(lambda r: _checked(ctx, _rebooted(ctx, r)), applied):
        out[r.host] = r
    return out


REBOOT_TIMEOUT = 600  # seconds a host has to answer again after a reboot


def _rebooted(ctx: Context, r: Rollout) -> Rollout:
    """`apply --reboot`: the host rebooted when it asks for it (or always), and waited for."""
    if ctx.settings.reboot is None:
        return r
    link = gens.links(ctx.root, ctx.data, [r.host])[r.host]
    try:
        before = gens.call(link, "boot")
        if ctx.settings.reboot != "always" and not before.get("required"):
            return r
        ctx.progress(f"{r.host}: rebooting ...")
        address = str(ctx.data["hosts"][r.host]["deploy"]["host"])
        if not restart_testbed_host(ctx.root, r.host, address):
            gens.call(link, "reboot")
            _wait_new_boot(link, str(before.get("boot_id")))
    except gens.GenerationError as e:
        return replace(r, outcome="unhealthy", message=f"the reboot failed: {e}")
    return replace(r, rebooted=True)


def _wait_new_boot(link: gens.Link, old: str) -> None:
    deadline = time.monotonic() + REBOOT_TIMEOUT
    time.sleep(3)
    while time.monotonic() < deadline:
        try:
            if gens.call(link, "boot", timeout=20).get("boot_id") != old:
                return
        except gens.GenerationError:
            pass
        time.sleep(2)
    raise gens.GenerationError(f"it did not answer within {REBOOT_TIMEOUT}s of its reboot")


def _checks_of(ctx: Context, host: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ctx.data["hosts"][host].get("checks", [])
    return found


def _checked(ctx: Context, r: Rollout) -> Rollout:
    """The host's health checks; a failure rolls the apply back (or is kept, as
    `--on-failure` says)."""
    checks = _checks_of(ctx, r.host)
    if not checks or r.outcome != "applied":
        return r
    origins = {c[k]["from"] for c in checks for k in ("http", "tcp") if k in c and "from" in c[k]}
    names = sorted({r.host} | (origins - {"control", "self"}))
    links = gens.links(ctx.root, ctx.data, names)
    address = str(ctx.data["hosts"][r.host]["deploy"]["host"])
    results = health.run_all(r.host, checks, links, address)
    r = replace(r, checks=[asdict(c) for c in results])
    bad = [c for c in results if not c.passed]
    if not bad:
        return r
    why = "; ".join(f"check {c.name!r} failed after {c.seconds}s: {c.output}" for c in bad)
    if ctx.settings.on_failure != "rollback" or r.generation is None:
        return replace(r, outcome="unhealthy", message=why)
    try:
        gens.call(links[r.host], "rollback", str(r.generation - 1))
    except gens.GenerationError as e:
        return replace(r, outcome="unhealthy", message=f"{why}; the rollback failed: {e}")
    return replace(r, outcome="rolled back", message=why)


def interrupted(ctx: Context, batch: list[str]) -> dict[str, Rollout]:
    """A stopped apply: what it began on each host is undone now (or, with `--on-failure
    stop|continue`, kept); a host out of reach undoes it by itself."""
    links = gens.links(ctx.root, ctx.data, batch)
    why = "the apply was interrupted"
    return dict(
        zip(
            batch, gens.in_parallel(lambda h: _undo_or_keep(ctx, links[h], why), batch), strict=True
        )
    )


def _undo_or_keep(ctx: Context, link: gens.Link, why: str) -> Rollout:
    """A host whose apply went wrong (``why``): rolled back with `--on-failure rollback` (the
    default), else its new generation kept as it is."""
    try:
        if ctx.settings.on_failure == "rollback":
            answer = gens.call(link, "revert", ctx.settings.run_id, why[:160])
        else:
            answer = gens.call(link, "confirm", ctx.settings.run_id, stdin="[]")
    except gens.GenerationError as e:
        return Rollout(link.host, "failed", message=f"{why}; and then: {e}")
    if answer.get("reverted"):
        return Rollout(link.host, "rolled back", answer.get("generation"), why)
    return Rollout(link.host, "failed", answer.get("generation"), why)


def _first_message(tasks: list[TaskResult], host: str) -> str:
    for t in tasks:
        if t.host == host and t.status in ("failed", "unreachable"):
            return f"{t.task}: {t.message[:300]}"
    return ""


def _failed(ctx: Context, link: gens.Link, tasks: list[TaskResult]) -> Rollout:
    """A host whose apply failed: rolled back (the default), or kept as it is."""
    return _undo_or_keep(ctx, link, f"a task failed: {_first_message(tasks, link.host)}")


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
    # the host answered only once it had undone the apply (a firewall that dropped new
    # connections until then): its own words, "rolled back: REASON", give the reason
    state = str(answer.get("state"))
    return Rollout(link.host, "rolled back", message=state.removeprefix("rolled back: "))


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
    lost = time.monotonic()
    back = gens.wait_back(link, None, timeout + 90)
    message = f"not reachable after apply: {error}"
    if back is None:
        return Rollout(link.host, "unreachable", message=message + "; it has not answered since")
    took = round(time.monotonic() - lost, 1)
    return Rollout(link.host, "rolled back", message=message, recovered=took)
