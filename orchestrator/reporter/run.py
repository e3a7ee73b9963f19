"""Rendering of plans and runs: a live per-host display while Ansible works, then tables.
Everything is drawn from typed events and stats, never from Ansible's own output."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.errors import escape_controls, one_line
from orchestrator.executor.deploy import ApplyResult, HostPlan, Plan
from orchestrator.executor.runner import Event
from orchestrator.reporter.valuediff import Line, show, value_lines

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
                    said = one_line(f"{event.host}: {event.status} at task {event.task!r}")
                    self.console.print(said, markup=False, highlight=False, soft_wrap=True)
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


PLAN_INDENT = "    "
DIFF_INDENT = "      "  # a check-mode diff, below its task
MARK_STYLE = {"+": "green", "-": "red", "~": "yellow"}
DIFF_LINES = 60  # of one check-mode diff; a longer diff says how many lines it left out


def render_plan(console: Console, plan: Plan) -> None:
    """Print a plan (made now or saved by `plan -o`). Lines are never wrapped nor cut by the
    renderer: piped, each line comes out whole; on a terminal, the terminal wraps them."""
    for line in plan_lines(plan):
        console.print(line, soft_wrap=True)


def plan_lines(plan: Plan) -> list[Text]:
    lines: list[Text] = []
    for _name, hp in sorted(plan.hosts.items()):
        lines.extend(_host_lines(hp))
    n = sum(1 for hp in plan.hosts.values() if hp.changed)
    lines.append(
        Text(
            f"{n} of {len(plan.hosts)} host(s) would change"
            + (" (offline: hosts not contacted)" if plan.offline else "")
        )
    )
    return lines


def _host_lines(hp: HostPlan) -> list[Text]:
    head = Text.assemble(
        ("~", "yellow") if hp.changed else ("=", "green"),
        " ",
        (escape_controls(hp.host), "bold"),
        f"  roles: {escape_controls(', '.join(hp.roles)) or '-'}",
    )
    lines = [head]
    if hp.first_apply and hp.changed:
        lines.append(_line(_first_apply_note(hp)))
        for c in hp.configuration:
            path = escape_controls(c["path"])
            lines.append(_change(Line("+", f"{path}: {show(c['value'])}")))
    elif hp.first_apply:
        lines.append(_line("never applied through orchestrate, and already as configured"))
    for c in hp.config_changes:
        path = escape_controls(c["path"])
        lines.extend(_change(x) for x in value_lines(path, c["old"], c["new"]))
    for role in hp.stopped_roles:
        lines.append(
            _line(
                f"role {escape_controls(role)} stops running on this host: "
                "what it configured stays on the host",
                "bold yellow",
            )
        )
    if hp.check is not None:
        lines.extend(_check_lines(hp.check))
    if hp.changed:
        lines.extend(_labelled("check", "blue", f" after the apply: {c}") for c in hp.checks)
    return lines


def _first_apply_note(hp: HostPlan) -> str:
    if not hp.roles:
        return "never applied: every option is new; no role runs on this host"
    roles = ("role " if len(hp.roles) == 1 else "roles ") + escape_controls(", ".join(hp.roles))
    return f"never applied: every option is new, and {roles} would run for the first time"


def _line(text: str, style: str = "") -> Text:
    return Text(PLAN_INDENT + text, style=style)


def _change(line: Line) -> Text:
    return Text.assemble(
        PLAN_INDENT * (line.depth + 1), (line.mark, MARK_STYLE[line.mark]), " ", line.text
    )


def _labelled(label: str, style: str, rest: str) -> Text:
    return Text.assemble(PLAN_INDENT, (label, style), one_line(rest))


# modules whose changes a rollback leaves in place (docs/rollout.md): installed packages stay
PACKAGE_ACTIONS = {"apt", "package", "dpkg_selections", "pip"}


def _check_lines(check: dict[str, Any]) -> list[Text]:
    lines = []
    if check["unreachable"]:
        lines.append(_labelled("unreachable", "magenta", ": check mode could not run"))
    for t in check["changed"]:
        note = f" ({t['message']})" if t["message"] and not t["diff"] else ""
        if t["action"].rsplit(".", 1)[-1] in PACKAGE_ACTIONS:
            note += " (packages: a rollback does not undo this)"
        lines.append(_labelled("would change", "yellow", f": {t['task']}{note}"))
        for d in t["diff"]:
            lines.extend(_diff_lines(d))
    for t in check["not_previewable"]:
        lines.append(_labelled("not previewable", "cyan", f": {t['task']} ({t['message']})"))
    for t in check["failed"]:
        lines.append(_labelled("fails in check mode", "red", f": {t['task']}: {t['message']}"))
    return lines


def _diff_lines(diff: dict[str, Any]) -> list[Text]:
    """A check-mode diff of one task: text as a unified diff, other values as old -> new."""
    if "prepared" in diff:
        return _at_most([escape_controls(x) for x in str(diff["prepared"]).splitlines()])
    before, after = diff.get("before"), diff.get("after")
    where = escape_controls(str(diff.get("after_header") or diff.get("before_header") or ""))
    if isinstance(before, str) and isinstance(after, str):
        lines = difflib.unified_diff(
            before.splitlines(), after.splitlines(), "before", "after", lineterm=""
        )
        body = [escape_controls(x) for x in list(lines)[2:]]
        return [Text(DIFF_INDENT + where), *_at_most(body)]
    if before is not None or after is not None:
        return [Text(f"{DIFF_INDENT}{where} {show(before)} -> {show(after)}")]
    return []


def _at_most(lines: list[str]) -> list[Text]:
    out = [Text(DIFF_INDENT + x) for x in lines[:DIFF_LINES]]
    if len(lines) > DIFF_LINES:
        out.append(Text(f"{DIFF_INDENT}... ({len(lines) - DIFF_LINES} more lines of this diff)"))
    return out
