"""plan and apply: compile, select hosts, run the site playbook (check mode for plan) through
the runner adapter, and keep state and run records. The library never prints: progress goes
through callbacks, results come back as values."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator import __version__, exitcodes, strategy
from orchestrator.compiler.build import input_hashes
from orchestrator.compiler.freshness import input_path, load_build_data, sha256_file
from orchestrator.errors import OrchestrateError, UsageError, quoted
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.executor import state
from orchestrator.executor.checks import describe
from orchestrator.executor.connection import run_overrides
from orchestrator.executor.generations import drop_trial, remember, save_trial
from orchestrator.executor.lock import FleetLock
from orchestrator.executor.rollout import (
    ON_FAILURE,
    RISKY,
    Context,
    Rollout,
    Settings,
    build_digest,
    run_batches,
)
from orchestrator.executor.runner import Event, HostStats, RunRequest, RunResult, TaskResult, run
from orchestrator.naming import SECRETS_GROUP
from orchestrator.pipeline import build
from orchestrator.secrets.store import pending_key
from orchestrator.selection import select

PLAN_FORMAT = 2


class PlanRefused(OrchestrateError):
    """A saved plan no longer matches the fleet's files."""


@dataclass
class Options:
    limit: str | None = None
    forks: int | None = None
    serial: str | None = None
    max_fail_percent: int | None = None
    verbosity: int = 0
    diff: bool = False
    strategy: str | None = None  # mitogen | ansible; None: what fleet.yaml says
    # safe rollout (docs/rollout.md): what a failed host gets, whether the hosts roll back by
    # themselves unless confirmed, a trial's length, and the confirmation's timeout
    on_failure: str = "rollback"
    magic_rollback: bool = True
    trial: int = 0
    confirm_timeout: int | None = None
    reboot: str | None = None  # needed | always
    generations: bool = True

    def __post_init__(self) -> None:
        if self.strategy is not None:
            strategy.checked(self.strategy, "--strategy")
        if self.forks is not None and self.forks < 1:
            raise UsageError("--forks must be at least 1")
        if self.serial is not None and not re.fullmatch(r"[1-9][0-9]{0,5}%?", self.serial):
            raise UsageError(f"--serial {quoted(self.serial)}: give a number of hosts or N%")
        if self.max_fail_percent is not None and not 0 <= self.max_fail_percent <= 100:
            raise UsageError("--max-fail-percent is a percentage, 0 to 100")
        if self.on_failure not in ON_FAILURE:
            raise UsageError(f"--on-failure is one of {', '.join(ON_FAILURE)}")
        if self.confirm_timeout is not None and not 5 <= self.confirm_timeout <= 3600:
            raise UsageError("--confirm-timeout is a number of seconds, 5 to 3600")
        if self.trial < 0:
            raise UsageError("--trial is a duration: 90s, 10m, 1h")

    def resolved(self, deploy: dict[str, Any]) -> Options:
        """These options with what the command line left open taken from fleet.yaml's
        `deploy:` block (deploy-all's forks, batches, failure threshold and strategy)."""
        serial = deploy.get("serial")
        return replace(
            self,
            forks=self.forks if self.forks is not None else deploy.get("forks"),
            serial=self.serial
            if self.serial is not None
            else (None if serial is None else str(serial)),
            max_fail_percent=(
                self.max_fail_percent
                if self.max_fail_percent is not None
                else deploy.get("max_fail_percent")
            ),
            strategy=self.strategy or strategy.fleet_default(deploy),
        )


@dataclass
class HostPlan:
    """One host's part of a plan. ``config_changes`` are the option paths whose value differs
    from the last apply (old -> new, whole values); ``configuration`` is, for a host never
    applied, every option that is set (what its first apply gives it); ``stopped_roles`` are
    roles that ran at the last apply and would not run now."""

    host: str
    roles: list[str]
    first_apply: bool
    config_changes: list[dict[str, Any]]
    check: dict[str, Any] | None = None
    configuration: list[dict[str, Any]] = field(default_factory=list)
    stopped_roles: list[str] = field(default_factory=list)
    # the health checks that run after the apply changes the host (name: what it tries)
    checks: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        checked = bool(
            self.check
            and (self.check["changed"] or self.check["failed"] or self.check["unreachable"])
        )
        # a host never applied is a change unless its check ran and found every task in
        # place (a machine made from an image of its configuration)
        return (
            bool(self.config_changes or self.stopped_roles)
            or checked
            or (self.first_apply and self.check is None)
        )


@dataclass
class Plan:
    fleet: str
    version: str
    created_at: int
    offline: bool
    inputs: dict[str, str]
    hosts: dict[str, HostPlan] = field(default_factory=dict)
    run_id: str | None = None
    # the shape of the saved JSON: 2 added each host's configuration and stopped_roles (a plan
    # saved without this field is shape 1, and reads back with both empty)
    format: int = PLAN_FORMAT

    @property
    def has_changes(self) -> bool:
        return any(h.changed for h in self.hosts.values())

    @property
    def failed_hosts(self) -> list[str]:
        """The hosts whose check failed or that could not be reached, by name."""
        return sorted(
            h
            for h, p in self.hosts.items()
            if p.check and (p.check["failed"] or p.check["unreachable"])
        )

    def to_json(self) -> dict[str, Any]:
        """The saved plan and `plan --json`: marked ``"format": "orchestrate.plan/N"``, as
        every JSON document the tool prints is."""
        data = asdict(self)
        data["format"] = f"orchestrate.plan/{self.format}"
        data["has_changes"] = self.has_changes
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Plan:
        """A plan saved by `plan -o`, back as a value (for `show` and `apply PLAN`)."""
        try:
            hosts = {
                name: HostPlan(
                    str(h["host"]), _names(h["roles"]), bool(h["first_apply"]),
                    _entries(h["config_changes"], "old", "new"), h.get("check"),
                    _entries(h.get("configuration", []), "value"),
                    _names(h.get("stopped_roles", [])), _names(h.get("checks", [])),
                )
                for name, h in data["hosts"].items()
            }  # fmt: skip
            return cls(
                str(data["fleet"]), str(data["version"]), int(data["created_at"]),
                bool(data["offline"]), dict(data["inputs"]), hosts, data.get("run_id"),
                _plan_format(data.get("format", 1)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UsageError(f"{where} is not a plan saved by `orchestrate plan -o`") from None


def _plan_format(marker: Any) -> int:
    """The shape of a saved plan: ``orchestrate.plan/N`` (an early format 2 wrote the bare
    number 2; format 1 had no marker)."""
    if isinstance(marker, int) and not isinstance(marker, bool) and marker in (1, 2):
        return marker
    if isinstance(marker, str) and marker.startswith("orchestrate.plan/"):
        number = marker.removeprefix("orchestrate.plan/")
        if number.isdigit() and 1 <= int(number) <= PLAN_FORMAT:
            return int(number)
    raise ValueError("not a plan format this version reads")


def _names(items: list[Any]) -> list[str]:
    if not isinstance(items, list):
        raise TypeError("not a list")
    return [str(x) for x in items]


def _entries(items: list[Any], *keys: str) -> list[dict[str, Any]]:
    """Path entries of a saved plan, each with ``keys`` (a KeyError for one without)."""
    if not isinstance(items, list):
        raise TypeError("not a list")
    return [{"path": str(e["path"]), **{k: e[k] for k in keys}} for e in items]


@dataclass
class ApplyResult:
    run_id: str
    run_dir: str
    stats: dict[str, HostStats]
    tasks: list[TaskResult]
    interrupted: bool
    duration: float
    rollouts: dict[str, Rollout] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[str]:
        rolled = {h for h, r in self.rollouts.items() if r.failed}
        return sorted(rolled | {h for h, s in self.stats.items() if not s.success})

    @property
    def exit_code(self) -> int:
        return exitcodes.for_run(bool(self.failed_hosts), self.interrupted)


Progress = Callable[[str], None]


def config_changes(ev: Evaluation, host: str, old: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Option paths whose value differs from the last successful apply, old -> new."""
    if old is None:
        return []
    new = ev.hosts[host].config
    paths = sorted(d.path for d in ev.host_eval(host).shape.trie.options.values())
    changes = []
    old_paths = set(_leaf_paths(old))
    for path in paths:
        before, after = _get(old, path), _get(new, path)
        old_paths.discard(path)
        if before != after:
            changes.append({"path": ".".join(path), "old": before, "new": after})
    for path in sorted(p for p in old_paths if not any(p[:i] in paths for i in range(len(p)))):
        changes.append({"path": ".".join(path), "old": _get(old, path), "new": None})
    return changes


def configuration(ev: Evaluation, host: str) -> list[dict[str, Any]]:
    """Every declared option of ``host`` that has a value, by path: what a first apply gives it."""
    config = ev.hosts[host].config
    paths = sorted(d.path for d in ev.host_eval(host).shape.trie.options.values())
    values = [(".".join(p), _get(config, p)) for p in paths]
    return [{"path": path, "value": value} for path, value in values if value is not None]


def stopped_roles(roles: list[str], old: dict[str, Any] | None) -> list[str]:
    """Roles the last apply ran that would not run now (state written before roles were
    recorded names none)."""
    before = old.get("roles") if old else None
    if not isinstance(before, list):
        return []
    return [r for r in dict.fromkeys(str(r) for r in before) if r not in roles]


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _leaf_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.extend(_leaf_paths(v, (*prefix, k)))
        else:
            out.append((*prefix, k))
    return out


def _request(
    root: str,
    build_dir: str,
    run_dir: str,
    hosts: list[str],
    opts: Options,
    check: bool,
    progress: Progress,
    data: dict[str, Any],
) -> RunRequest:
    overrides = run_overrides(root, data, hosts, progress)
    return RunRequest(
        build_dir=build_dir,
        run_dir=run_dir,
        hosts=hosts,
        check=check,
        forks=opts.forks,
        serial=opts.serial,
        max_fail_percent=opts.max_fail_percent,
        overrides=overrides,
        verbosity=opts.verbosity,
        diff=opts.diff,
        strategy=opts.strategy or strategy.DEFAULT,  # resolved() always sets it
    )


def make_plan(
    root: str,
    opts: Options,
    offline: bool,
    on_event: Callable[[Event], None],
    cancelled: threading.Event,
    progress: Progress,
) -> Plan:
    with FleetLock(state.state_dir(root), "plan"):
        ev, result = build(root)
        opts = opts.resolved(ev.spec.deploy)
        data = load_build_data(result.out_dir)
        hosts = select(data, opts.limit)
        plan = Plan(ev.spec.name, __version__, int(time.time()), offline, input_hashes(ev))
        for h in hosts:
            old = state.load_host_state(root, h)
            roles = data["hosts"][h]["roles"]
            plan.hosts[h] = HostPlan(
                h,
                roles,
                old is None,
                config_changes(ev, h, old["config"] if old else None),
                configuration=configuration(ev, h) if old is None else [],
                stopped_roles=stopped_roles(roles, old),
                checks=[f"{c['name']}: {describe(c)}" for c in data["hosts"][h].get("checks", [])],
            )
        if offline or not hosts:
            return plan
        run_id, run_dir = state.new_run_dir(root, "plan")
        plan.run_id = run_id
        req = _request(root, result.out_dir, run_dir, hosts, opts, True, progress, data)
        res = run(req, on_event, cancelled)
        _attach_check(plan, res)
        state.write_summary(
            run_dir,
            {
                "mode": "plan",
                "plan": plan.to_json(),
                "runner_status": res.status,
                "rc": res.rc,
                "strategy": opts.strategy,
            },
        )
        return plan


def _attach_check(plan: Plan, res: RunResult) -> None:
    for h, hp in plan.hosts.items():
        mine = [t for t in res.tasks if t.host == h]
        stats = res.stats.get(h, HostStats())
        hp.check = {
            "changed": [_task_json(t) for t in mine if t.status == "changed"],
            "not_previewable": [_task_json(t) for t in mine if t.status == "not_previewable"],
            "failed": [_task_json(t) for t in mine if t.status == "failed"],
            "unreachable": stats.unreachable > 0,
            "ok": stats.ok,
        }


def _task_json(t: TaskResult) -> dict[str, Any]:
    return {
        "task": t.task,
        "role": t.role,
        "action": t.action,
        "diff": t.diff,
        "message": t.message,
    }


def load_plan(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(data, dict) or "inputs" not in data or "hosts" not in data:
        raise UsageError(f"{path} is not a plan saved by `orchestrate plan -o`")
    return data


def changed_inputs(root: str, inputs: dict[str, str]) -> list[str]:
    """Input files whose content differs from what a saved plan recorded."""
    changed = []
    for name, digest in sorted(inputs.items()):
        try:
            if sha256_file(input_path(name, root)) != digest:
                changed.append(name)
        except OSError:
            changed.append(name)
    return changed


def apply(
    root: str,
    opts: Options,
    plan_file: str | None,
    confirm: Callable[[list[str]], bool],
    on_event: Callable[[Event], None],
    cancelled: threading.Event,
    progress: Progress,
) -> ApplyResult | None:
    """Run the site playbook for real; returns None when the user declined."""
    with FleetLock(state.state_dir(root), "apply") as lock:
        if lock.reclaimed:
            progress(f"reclaimed a stale lock left by pid {lock.reclaimed.get('pid')}")
        saved = load_plan(plan_file) if plan_file else None
        if saved is not None:
            stale = changed_inputs(root, saved["inputs"])
            if stale:
                raise PlanRefused(
                    "the fleet changed since the plan was made ("
                    + ", ".join(stale)
                    + "); run `orchestrate plan` again"
                )
        ev, result = build(root)
        opts = opts.resolved(ev.spec.deploy)
        inputs = input_hashes(ev)
        if saved is not None and inputs != saved["inputs"]:
            raise PlanRefused("the fleet's inputs changed since the plan was made; plan again")
        data = load_build_data(result.out_dir)
        hosts = sorted(saved["hosts"]) if saved is not None else select(data, opts.limit)
        if saved is None and not confirm(hosts):
            return None
        _warn_unguarded(ev, hosts, opts, progress)
        run_id, run_dir = state.new_run_dir(root, "apply")
        started = time.monotonic()
        settings = Settings(
            run_id, build_digest(inputs), opts.magic_rollback, opts.on_failure, opts.trial,
            opts.confirm_timeout, opts.reboot, opts.generations,
        )  # fmt: skip
        res, rollouts = run_batches(
            Context(root, data, settings, progress),
            _request(root, result.out_dir, run_dir, hosts, opts, False, progress, data),
            opts.max_fail_percent,
            on_event,
            cancelled,
        )
        duration = time.monotonic() - started
        for h in hosts:
            s, r = res.stats.get(h), rollouts.get(h)
            reached = s is not None and (s.reached or not data["hosts"][h]["roles"])
            # a host whose check failed and that stays as applied runs the new configuration
            kept = ("applied", "unchanged", "trial", "unhealthy")
            ok = r is not None and r.outcome in kept
            if s is not None and s.success and reached and ok and not res.interrupted:
                _record_apply(root, h, ev, data, run_id, inputs, r)
        out = ApplyResult(
            run_id, run_dir, res.stats, res.tasks, res.interrupted, duration, rollouts
        )
        state.write_summary(run_dir, summary(out, hosts, opts, res))
        return out


def _record_apply(
    root: str,
    host: str,
    ev: Evaluation,
    data: dict[str, Any],
    run_id: str,
    inputs: dict[str, str],
    r: Rollout | None,
) -> None:
    """The host's last-applied state, and the generation that holds it; for a trial, what
    becomes that state once `orchestrate confirm` makes it stay."""
    previous = state.load_host_state(root, host)
    record = state.host_record(
        host, ev.hosts[host].config, data["hosts"][host]["roles"], run_id, inputs
    )
    if r is not None and r.outcome == "trial":
        save_trial(root, host, {"run": run_id, "generation": r.generation, "state": record,
                                "previous": previous})  # fmt: skip
        return
    state.put_host_state(root, host, record)
    drop_trial(root, host)  # a trial this apply built on is the past now
    if r is not None and r.generation is not None and r.digest:
        remember(root, host, r.generation, r.digest, {"state": record, "previous": previous})
    if host in data["groups"].get(SECRETS_GROUP, []):
        _forget_delivered_key(root, host)


def _warn_unguarded(ev: Evaluation, hosts: list[str], opts: Options, progress: Progress) -> None:
    """--no-magic-rollback, when a change could cut the control node off its hosts."""
    if opts.magic_rollback and opts.generations:
        return
    risky = []
    for h in hosts:
        old = state.load_host_state(root=ev.spec.root, host=h)
        paths = [c["path"] for c in config_changes(ev, h, old["config"] if old else None)]
        if any(p == r or p.startswith(r + ".") for p in paths for r in RISKY):
            risky.append(h)
    if risky:
        progress(
            "warning: without magic rollback, this apply changes sshd, the firewall, networking "
            f"or the VPN of {', '.join(risky)}: a mistake there is not undone by the host"
        )


def _forget_delivered_key(root: str, host: str) -> None:
    """A host's new private key stays on the control node only until an apply installed it."""
    key = pending_key(root, host)
    if key:
        os.unlink(key)


def summary(out: ApplyResult, hosts: list[str], opts: Options, res: RunResult) -> dict[str, Any]:
    return {
        "mode": "apply",
        "run": out.run_id,
        "version": __version__,
        "hosts": {h: asdict(out.stats.get(h, HostStats())) for h in hosts},
        "failed_hosts": out.failed_hosts,
        "interrupted": out.interrupted,
        "duration": round(out.duration, 3),
        "runner_status": res.status,
        "rc": res.rc,
        "limit": opts.limit,
        "strategy": opts.strategy,
        "artifacts": os.path.relpath(res.artifacts, out.run_dir),
        "rollout": {h: asdict(r) for h, r in sorted(out.rollouts.items())},
    }
