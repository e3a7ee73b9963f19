"""`orchestrate schedule add|list|remove|run`: definitions in `.orchestrate/schedules.json`,
entries in the user's real crontab (python-crontab), results in `.orchestrate/schedule/`."""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from crontab import CronSlices, CronTab

from orchestrator import exitcodes
from orchestrator.errors import OrchestrateError, UsageError, display_path
from orchestrator.executor.deploy import Options, apply, make_plan
from orchestrator.executor.lock import LockHeld
from orchestrator.fsutil import CorruptState, atomic_json, load_state_json, write_user_file
from orchestrator.paths import state_dir

MODES = ("plan", "apply")


@dataclass(frozen=True)
class RunSpec:
    """What a scheduled run does, as the command line gave it (parsed there: this module never
    reads command lines)."""

    mode: str  # plan | apply
    limit: str | None = None
    forks: int | None = None
    serial: str | None = None
    max_fail_percent: int | None = None
    offline: bool = False
    plan_file: str | None = None
    strategy: str | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    mode: str
    args: list[str]  # the words after `--`, as shown by `schedule list`
    textfile_dir: str
    # the parsed run; None in a schedule recorded before it was kept, which the command line
    # parses again from ``args``
    spec: dict[str, Any] | None = None

    def run_spec(self) -> RunSpec | None:
        if self.spec is None:
            return None
        try:
            return RunSpec(**self.spec)
        except TypeError:
            raise CorruptState(f"schedule {self.name!r}: its recorded run is corrupt") from None


def _defs_path(root: str) -> str:
    return os.path.join(state_dir(root), "schedules.json")


def _load(root: str) -> dict[str, Schedule]:
    path = _defs_path(root)
    fix = "remove it and add the schedules again (`orchestrate schedule add`)"
    raw = load_state_json(path, dict, fix)
    if raw is None:
        return {}
    try:
        return {n: Schedule(**s) for n, s in raw.items()}
    except TypeError:
        raise CorruptState(f"{display_path(path)} is corrupt (not schedules); {fix}") from None


def _marker(root: str, name: str) -> str:
    return f"orchestrate:{root}:{name}"


def results_dir(root: str) -> str:
    return os.path.join(state_dir(root), "schedule")


def add(
    root: str, name: str, cron: str, spec: RunSpec, words: list[str], textfile_dir: str | None
) -> Schedule:
    """Record a schedule and install its crontab entry (replacing one of the same name);
    ``words`` are the command's arguments as written, ``spec`` what they mean."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"schedule name {name!r}: use letters, digits, - and _")
    if not CronSlices.is_valid(cron):
        raise UsageError(f"--cron {cron!r} is not a valid cron expression (e.g. '*/30 * * * *')")
    if spec.mode not in MODES:
        raise UsageError("the scheduled command must be `plan ...` or `apply ...` after --")
    where = os.path.abspath(textfile_dir) if textfile_dir else results_dir(root)
    sched = Schedule(name, cron, spec.mode, list(words), where, asdict(spec))
    defs = _load(root)
    defs[name] = sched
    os.makedirs(results_dir(root), mode=0o700, exist_ok=True)  # cron appends its log here
    atomic_json(_defs_path(root), {n: asdict(s) for n, s in sorted(defs.items())})
    tab = CronTab(user=True)
    tab.remove_all(comment=_marker(root, name))
    job = tab.new(command=_cron_command(root, name), comment=_marker(root, name))
    job.setall(cron)
    tab.write()
    return sched


def _cron_command(root: str, name: str) -> str:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    log = os.path.join(results_dir(root), f"{name}.cron.log")
    return (
        f"env PATH={shlex.quote(path)} {shlex.quote(sys.executable)} -m orchestrator.cli "
        f"--fleet {shlex.quote(root)} schedule run {shlex.quote(name)} "
        f">> {shlex.quote(log)} 2>&1"
    )


def remove(root: str, name: str) -> None:
    defs = _load(root)
    if name not in defs:
        raise UsageError(f"no schedule named {name!r}")
    del defs[name]
    atomic_json(_defs_path(root), {n: asdict(s) for n, s in sorted(defs.items())})
    tab = CronTab(user=True)
    tab.remove_all(comment=_marker(root, name))
    tab.write()


def list_schedules(root: str) -> list[dict[str, Any]]:
    tab = CronTab(user=True)
    installed = {j.comment for j in tab}
    last = _last_results(root)
    return [
        {**asdict(s), "installed": _marker(root, n) in installed, "last": last.get(n)}
        for n, s in sorted(_load(root).items())
    ]


def _last_results(root: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(os.path.join(results_dir(root), "runs.jsonl"), encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                out[rec["schedule"]] = rec
    except FileNotFoundError:
        pass
    return out


def load_schedule(root: str, name: str) -> Schedule:
    defs = _load(root)
    if name not in defs:
        raise UsageError(f"no schedule named {name!r}")
    return defs[name]


def run_scheduled(root: str, name: str, spec: RunSpec | None = None) -> dict[str, Any]:
    """Run one schedule non-interactively; log one JSON line and write the textfile. ``spec``
    stands in for a schedule recorded without its parsed run."""
    sched = load_schedule(root, name)
    spec = sched.run_spec() or spec
    if spec is None:
        raise UsageError(f"schedule {name!r} has no recorded run: add it again")
    opts = Options(
        limit=spec.limit,
        forks=spec.forks,
        serial=spec.serial,
        max_fail_percent=spec.max_fail_percent,
        strategy=spec.strategy,
    )
    started = time.time()
    record: dict[str, Any] = {"schedule": name, "mode": sched.mode, "started": int(started)}
    try:
        record.update(_execute(root, spec, opts))
    except LockHeld as exc:
        record.update({"exit": exitcodes.LOCKED, "skipped": str(exc)})
    except OrchestrateError as exc:
        record.update({"exit": exc.exit_code, "error": str(exc)})
    record["duration"] = round(time.time() - started, 3)
    _append(root, record)
    _textfile(root, sched, record)
    return record


def _execute(root: str, spec: RunSpec, opts: Options) -> dict[str, Any]:
    never = threading.Event()

    def quiet(_message: str) -> None:
        return None

    if spec.mode == "plan":
        plan = make_plan(root, opts, spec.offline, lambda e: None, never, quiet)
        failed = [h for h, p in plan.hosts.items() if p.check and p.check["failed"]]
        unreachable = [h for h, p in plan.hosts.items() if p.check and p.check["unreachable"]]
        drift = [h for h, p in plan.hosts.items() if p.changed]
        return {
            # a schedule's plan is run for its drift: changes count as if asked for
            "exit": exitcodes.for_plan(bool(plan.failed_hosts), plan.has_changes, detailed=True),
            "run": plan.run_id,
            "changed": drift,
            "failed": failed,
            "unreachable": unreachable,
            "drift": bool(drift),
        }
    result = apply(root, opts, spec.plan_file, lambda hosts: True, lambda e: None, never, quiet)
    assert result is not None
    changed = sorted(h for h, s in result.stats.items() if s.changed)
    failed = sorted(h for h, s in result.stats.items() if s.failed)
    unreachable = sorted(h for h, s in result.stats.items() if s.unreachable)
    return {
        "exit": result.exit_code,
        "run": result.run_id,
        "changed": changed,
        "failed": failed,
        "unreachable": unreachable,
        "drift": bool(changed),
    }


def _fleet_name(root: str) -> str:
    from orchestrator.loader.fleet import load_fleet

    try:
        return load_fleet(root).name
    except OrchestrateError:
        return os.path.basename(os.path.normpath(root))


def _append(root: str, record: dict[str, Any]) -> None:
    folder = results_dir(root)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with open(os.path.join(folder, "runs.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _textfile(root: str, sched: Schedule, rec: dict[str, Any]) -> None:
    fleet = _fleet_name(root)
    labels = f'fleet="{fleet}",schedule="{sched.name}",mode="{sched.mode}"'
    metrics = [
        (
            "orchestrate_last_run_timestamp_seconds",
            "gauge",
            "When the scheduled run started.",
            rec["started"],
        ),
        ("orchestrate_last_run_duration_seconds", "gauge", "How long it took.", rec["duration"]),
        (
            "orchestrate_last_run_exit_code",
            "gauge",
            "Its exit code (4: skipped, lock held).",
            rec["exit"],
        ),
        (
            "orchestrate_last_run_hosts_changed",
            "gauge",
            "Hosts changed (apply) or drifted (plan).",
            len(rec.get("changed", [])),
        ),
        (
            "orchestrate_last_run_hosts_failed",
            "gauge",
            "Hosts with failed tasks.",
            len(rec.get("failed", [])),
        ),
        (
            "orchestrate_last_run_hosts_unreachable",
            "gauge",
            "Hosts that could not be reached.",
            len(rec.get("unreachable", [])),
        ),
        (
            "orchestrate_last_run_drift",
            "gauge",
            "1 when the run found something to change.",
            int(bool(rec.get("drift"))),
        ),
    ]
    lines = []
    for metric, kind, text, value in metrics:
        lines += [
            f"# HELP {metric} {text}",
            f"# TYPE {metric} {kind}",
            f"{metric}{{{labels}}} {value}",
        ]
    os.makedirs(sched.textfile_dir, exist_ok=True)
    path = os.path.join(sched.textfile_dir, f"orchestrate_{fleet}_{sched.name}.prom")
    # the temporary name does not end in .prom, so node_exporter never reads half a file
    write_user_file(path, ("\n".join(lines) + "\n").encode(), 0o644)
