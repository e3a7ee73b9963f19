"""The ansible-runner adapter: write a complete private data dir, run the site playbook (or one
command on one host) through ansible-runner's Python API, and turn its events and stats into
typed results. Nothing here parses Ansible's stdout."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ansible_runner

from orchestrator import strategy
from orchestrator.compiler.unsafe import unsafe_json

HERE = os.path.dirname(os.path.abspath(__file__))
COMMAND_ACTIONS = {
    "command",
    "shell",
    "raw",
    "script",
    "ansible.builtin.command",
    "ansible.builtin.shell",
    "ansible.builtin.raw",
    "ansible.builtin.script",
}


@dataclass
class TaskResult:
    host: str
    task: str
    role: str
    action: str
    status: str  # ok | changed | failed | unreachable | skipped | not_previewable
    diff: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    uuid: str = ""
    # what an orchestrate module returned for the control node (its ``orchestrate`` key)
    returned: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    reached: bool = False  # the play got to this host (batches after an abort never do)

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


@dataclass(frozen=True)
class Event:
    """What the live display needs: a host started a task, or finished one."""

    kind: str  # task_start | result | play_start
    host: str
    task: str
    status: str = ""


@dataclass
class RunRequest:
    build_dir: str
    run_dir: str
    hosts: list[str]
    check: bool = False
    forks: int | None = None
    serial: str | None = None
    max_fail_percent: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    verbosity: int = 0
    diff: bool = False
    envvars: dict[str, str] = field(default_factory=dict)  # e.g. an image build's fact cache
    # Ansible's own unless the caller says: plan and apply pass the fleet's or the flag's
    strategy: str = strategy.ANSIBLE
    ident: str = "artifacts"  # the artifacts folder of this run (a batch of an apply: its own)


@dataclass
class RunResult:
    status: str
    rc: int
    stats: dict[str, HostStats]
    tasks: list[TaskResult]
    interrupted: bool
    artifacts: str


def prepare(req: RunRequest) -> str:
    """Write the private data dir; returns the project folder holding the playbook."""
    os.makedirs(req.run_dir, mode=0o700, exist_ok=True)
    os.chmod(req.run_dir, 0o700)
    project = os.path.join(req.run_dir, "project")
    os.makedirs(os.path.join(project, "host_vars"), exist_ok=True)
    shutil.copyfile(os.path.join(req.build_dir, "site.yml"), os.path.join(project, "site.yml"))
    # Playbook host_vars outrank the inventory's: connection settings of the testbed go here
    # (marked unsafe like every other variable orchestrate writes: data, never templates).
    for host, values in req.overrides.items():
        with open(os.path.join(project, "host_vars", f"{host}.json"), "w", encoding="utf-8") as fh:
            json.dump(unsafe_json(values), fh, sort_keys=True)
    return project


def run(
    req: RunRequest, on_event: Callable[[Event], None], cancelled: threading.Event
) -> RunResult:
    project = prepare(req)
    tasks: list[TaskResult] = []
    collector = _Collector(req.check, tasks, on_event)
    # the role arguments come from the compile, which checked them: Ansible need not again
    extravars: dict[str, Any] = {"orchestrate_check_role_arguments": False}
    if req.serial:
        extravars["orchestrate_serial"] = req.serial
    if req.max_fail_percent is not None:
        extravars["orchestrate_max_fail_percent"] = req.max_fail_percent
    # diffs always for plan; in apply only on request: they cost a read of every changed file
    cmdline = "--check --diff" if req.check else ("--diff" if req.diff else "")
    skips = os.path.join(req.run_dir, "skips.jsonl")
    r = ansible_runner.run(
        private_data_dir=req.run_dir,
        project_dir=project,
        playbook="site.yml",
        inventory=os.path.join(req.build_dir, "inventory", "hosts.json"),
        envvars={
            "ANSIBLE_CONFIG": os.path.join(req.build_dir, "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": os.path.join(req.build_dir, "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "orchestrate_skips",
            "ORCHESTRATE_SKIPS": skips,
            **strategy.envvars(req.strategy),
            **req.envvars,
        },
        extravars=unsafe_json(extravars),
        limit=",".join(req.hosts),
        forks=req.forks,
        cmdline=cmdline or None,
        verbosity=req.verbosity or None,
        quiet=True,
        ident=req.ident,
        event_handler=collector.handle,
        cancel_callback=cancelled.is_set,
        suppress_env_files=True,
        # ansible-runner would point the fact cache into this run's artifacts, so every run
        # gathered facts again; any other value leaves the build's persistent cache in charge.
        fact_cache_type="ansible.cfg",
    )
    stats = _stats(r.stats or {}, req.hosts)
    if req.check:
        _explain_skips(tasks, skips)
    return RunResult(
        str(r.status),
        int(r.rc or 0),
        stats,
        tasks,
        cancelled.is_set(),
        os.path.join(req.run_dir, "artifacts", req.ident),
    )


@dataclass(frozen=True)
class PlaybookRequest:
    """A playbook of a project folder rather than of a compiled build: the image builder's
    stages, on this machine or on a build host, with the inventory and variables given."""

    run_dir: str
    project_dir: str
    playbook: str
    inventory: dict[str, Any]
    envvars: dict[str, str]
    extravars: dict[str, Any]


def run_playbook(
    req: PlaybookRequest, on_event: Callable[[Event], None], cancelled: threading.Event
) -> RunResult:
    """Run ``req``'s playbook through ansible-runner; results are read from its events, as for
    :func:`run`."""
    os.makedirs(req.run_dir, mode=0o700, exist_ok=True)
    tasks: list[TaskResult] = []
    collector = _Collector(False, tasks, on_event)
    r = ansible_runner.run(
        private_data_dir=req.run_dir,
        project_dir=req.project_dir,
        playbook=req.playbook,
        inventory=req.inventory,
        # the image builder's stages: Ansible's own strategy, whatever a build's ansible.cfg says
        envvars={**strategy.envvars(strategy.ANSIBLE), **req.envvars},
        extravars=unsafe_json(req.extravars),
        quiet=True,
        ident="artifacts",
        event_handler=collector.handle,
        cancel_callback=cancelled.is_set,
        suppress_env_files=True,
    )
    hosts = list((req.inventory.get("all") or {}).get("hosts") or {})
    return RunResult(
        str(r.status),
        int(r.rc or 0),
        _stats(r.stats or {}, hosts),
        tasks,
        cancelled.is_set(),
        os.path.join(req.run_dir, "artifacts", "artifacts"),
    )


@dataclass(frozen=True)
class CommandResult:
    """One host's answer to a command run through Ansible (`secrets host-key --from-host`)."""

    status: str  # ok | failed | unreachable | missing (the host never answered at all)
    stdout: str = ""
    message: str = ""


def run_command(
    build_dir: str, run_dir: str, host: str, command: str, overrides: dict[str, Any]
) -> CommandResult:
    """Run ``command`` (ansible.builtin.command, no shell) on ``host`` of the build through
    ansible-runner, with ``overrides`` as the host's connection settings, and read its result
    from the events."""
    found: list[CommandResult] = []

    def handle(event: dict[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        if kind in _COMMAND_STATUS and (event.get("event_data") or {}).get("host") == host:
            res = event["event_data"].get("res") or {}
            stdout = str(res.get("stdout") or "")
            message = str(res.get("stderr") or res.get("msg") or "")[:2000]  # a command's own
            found.append(CommandResult(_COMMAND_STATUS[kind], stdout, message))
        return True

    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    ansible_runner.run(
        private_data_dir=run_dir,
        host_pattern=host,
        module="ansible.builtin.command",
        module_args=command,
        inventory=os.path.join(build_dir, "inventory", "hosts.json"),
        envvars={
            "ANSIBLE_CONFIG": os.path.join(build_dir, "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            # one command: nothing for a persistent interpreter to save
            **strategy.envvars(strategy.ANSIBLE),
        },
        extravars=unsafe_json(overrides),
        quiet=True,
        ident="artifacts",
        event_handler=handle,
        suppress_env_files=True,
    )
    return found[-1] if found else CommandResult("missing")


_COMMAND_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
}


def _stats(raw: dict[str, dict[str, int]], hosts: list[str]) -> dict[str, HostStats]:
    out = {h: HostStats() for h in hosts}
    for key, attr in (
        ("ok", "ok"),
        ("changed", "changed"),
        ("failures", "failed"),
        ("dark", "unreachable"),
        ("skipped", "skipped"),
    ):
        for host, n in (raw.get(key) or {}).items():
            setattr(out.setdefault(host, HostStats()), attr, n)
    for host in raw.get("processed") or {}:
        out.setdefault(host, HostStats()).reached = True
    return out


class _Collector:
    """Turns ansible-runner events into TaskResults and live-display Events."""

    def __init__(
        self, check: bool, tasks: list[TaskResult], on_event: Callable[[Event], None]
    ) -> None:
        self.check = check
        self.tasks = tasks
        self.on_event = on_event

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host") or data.get("remote_addr") or ""
        task = str(data.get("task") or "")
        if kind == "runner_on_start":
            self.on_event(Event("task_start", host, task))
        elif kind.startswith("runner_on_") and kind not in ("runner_on_start",):
            result = self._result(kind, data, host, task)
            if result is not None:
                self.tasks.append(result)
                self.on_event(Event("result", host, task, result.status))
        return True

    def _result(self, kind: str, data: dict[str, Any], host: str, task: str) -> TaskResult | None:
        res = data.get("res") or {}
        action = str(data.get("task_action") or data.get("resolved_action") or "")
        role = str(data.get("role") or "")
        if kind == "runner_on_unreachable":
            return TaskResult(host, task, role, action, "unreachable", message=_msg(res))
        if kind == "runner_on_failed":
            status = "ok" if data.get("ignore_errors") else "failed"
            return TaskResult(host, task, role, action, status, message=_msg(res))
        if kind == "runner_on_skipped":  # its reason arrives through orchestrate_skips
            return TaskResult(host, task, role, action, "skipped", uuid=str(data.get("task_uuid")))
        if kind == "runner_on_ok":
            if self.check and _unpreviewable_command(action, data, res):
                return TaskResult(
                    host,
                    task,
                    role,
                    action,
                    "not_previewable",
                    message="command or shell without creates/removes",
                )
            status = "changed" if res.get("changed") else "ok"
            diff = res.get("diff") or []
            return TaskResult(
                host,
                task,
                role,
                action,
                status,
                diff=diff if isinstance(diff, list) else [diff],
                message=_msg(res) if status == "changed" else "",
                returned=res["orchestrate"] if isinstance(res.get("orchestrate"), dict) else {},
            )
        return None


def _msg(res: dict[str, Any]) -> str:
    """What a result says; for a loop, what its failed items say (its own message is only
    that one or more items failed)."""
    items = [
        r
        for r in res.get("results") or []
        if isinstance(r, dict) and (r.get("failed") or r.get("unreachable"))
    ]
    if items:
        return "; ".join(dict.fromkeys(_said(r) for r in items))[:2000]
    return _said(res)[:2000]


def _said(res: dict[str, Any]) -> str:
    return str(res.get("msg") or res.get("stderr") or res.get("module_stderr") or "")


def _unpreviewable_command(action: str, data: dict[str, Any], res: dict[str, Any]) -> bool:
    if action not in COMMAND_ACTIONS or "rc" in res:
        return False  # not a command, or one that really ran (`check_mode: false`: a read)
    args = data.get("task_args") or res.get("invocation", {}).get("module_args") or {}
    return not (args.get("creates") or args.get("removes"))


def _explain_skips(tasks: list[TaskResult], path: str) -> None:
    """Skips that check mode caused (the module cannot preview) become not_previewable."""
    reasons: dict[tuple[str, str], str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                reasons[(rec["host"], rec["task_uuid"])] = rec["msg"]
    except FileNotFoundError:
        return
    for t in tasks:
        msg = reasons.get((t.host, t.uuid), "")
        if t.status == "skipped" and ("check mode" in msg or "would have run" in msg):
            t.status, t.message = "not_previewable", msg
