"""Rendering of plans and runs: a live per-host display while Ansible works, then tables.
Everything is drawn from typed events and stats, never from Ansible's own output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.executor.deploy import ApplyResult, Plan
from orchestrator.executor.runner import Event

STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold magenta",
    "skipped": "dim",
    "not_previewable": "cyan",
    "running": "blue",
    "waiting": "dim",
}


@dataclass
class _Row:
    state: str = "waiting"
    task: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class LiveProgress:
    """Per-host progress fed by runner events; a live table on a terminal, lines otherwise."""

    def __init__(self, console: Console, hosts: list[str], title: str) -> None:
        self.console = console
        self.rows = {h: _Row() for h in hosts}
        self.title = title
        self.live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self.live = Live(
                self._table(), console=self.console, refresh_per_second=8, transient=True
            )
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, event: Event) -> None:
        row = self.rows.setdefault(event.host, _Row())
        if event.kind == "task_start":
            row.state, row.task = "running", event.task
        elif event.kind == "result":
            row.counts[event.status] = row.counts.get(event.status, 0) + 1
            if event.status in ("failed", "unreachable"):
                row.state = event.status
                if self.live is None:
                    self.console.print(f"{event.host}: {event.status} at task {event.task!r}")
        if self.live is not None:
            self.live.update(self._table())

    def _table(self) -> Table:
        t = Table(title=self.title, expand=False)
        for col in ("host", "state", "task", "ok", "changed", "failed"):
            t.add_column(col)
        for h, r in sorted(self.rows.items()):
            t.add_row(
                h,
                Text(r.state, style=STYLE.get(r.state, "")),
                r.task[:50],
                str(r.counts.get("ok", 0)),
                str(r.counts.get("changed", 0)),
                str(r.counts.get("failed", 0) + r.counts.get("unreachable", 0)),
            )
        return t


def apply_table(result: ApplyResult) -> Table:
    t = Table(title=f"apply {result.run_id} ({result.duration:.1f}s)")
    for col in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
        t.add_column(col, justify="right" if col != "host" else "left")
    for h, s in sorted(result.stats.items()):
        style = "red" if not s.success else ("yellow" if s.changed else "green")
        t.add_row(
            Text(h, style=style),
            str(s.ok),
            str(s.changed),
            str(s.failed),
            str(s.unreachable),
            str(s.skipped),
        )
    return t


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def render_plan(console: Console, plan: Plan) -> None:
    for h, hp in sorted(plan.hosts.items()):
        mark = "[yellow]~[/]" if hp.changed else "[green]=[/]"
        console.print(f"{mark} [bold]{h}[/]  roles: {', '.join(hp.roles) or '-'}")
        if hp.first_apply and hp.changed:
            console.print("    never applied: every option is new")
        elif hp.first_apply:
            console.print("    never applied through orchestrate, and already as configured")
        for c in hp.config_changes:
            console.print(
                f"    {c['path']}: {_short(c['old'])} -> {_short(c['new'])}", markup=False
            )
        if hp.check is None:
            continue
        if hp.check["unreachable"]:
            console.print("    [magenta]unreachable[/]: check mode could not run")
        for t in hp.check["changed"]:
            note = f" ({t['message'][:200]})" if t["message"] and not t["diff"] else ""
            console.print(f"    [yellow]would change[/]: {t['task']}{note}", highlight=False)
            for d in t["diff"]:
                _render_diff(console, d)
        for t in hp.check["not_previewable"]:
            console.print(
                f"    [cyan]not previewable[/]: {t['task']} ({t['message'][:80]})", highlight=False
            )
        for t in hp.check["failed"]:
            console.print(
                f"    [red]fails in check mode[/]: {t['task']}: {t['message'][:200]}",
                highlight=False,
            )
    n = sum(1 for hp in plan.hosts.values() if hp.changed)
    console.print(
        f"{n} of {len(plan.hosts)} host(s) would change"
        + (" (offline: hosts not contacted)" if plan.offline else "")
    )


def _render_diff(console: Console, diff: dict[str, Any]) -> None:
    if "prepared" in diff:
        console.print("      " + str(diff["prepared"])[:2000], markup=False, highlight=False)
        return
    before, after = diff.get("before"), diff.get("after")
    where = diff.get("after_header") or diff.get("before_header") or ""
    if isinstance(before, str) and isinstance(after, str):
        import difflib

        lines = difflib.unified_diff(
            before.splitlines(), after.splitlines(), "before", "after", lineterm=""
        )
        console.print(f"      {where}", markup=False)
        for line in list(lines)[2:60]:
            console.print(f"      {line}", markup=False, highlight=False)
    elif before is not None or after is not None:
        console.print(f"      {where} {_short(before)} -> {_short(after)}", markup=False)
