"""The JSON documents that `--json` prints, one kind per reporting command.

Every document is one JSON object whose first key, ``format``, names its shape and the shape's
version: ``"orchestrate.<kind>/<version>"``. A version changes only when a key is removed,
renamed or changes its type; new keys may appear in any version. docs/conventions.md ("JSON
output") lists every kind's keys; a test holds this module and that page together.

Messages inside documents are escaped as the text output escapes them (no control character,
one line each, at most :data:`orchestrator.errors.LINE` characters); paths are shown as the
text shows them: relative to the working directory when below it, else absolute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.errors import LINE, OrchestrateError, Problem, display_path, escape_controls
from orchestrator.errors import one_line as _one_line

# kind -> version of its shape
SHAPES: dict[str, int] = {
    "compile": 1,
    "errors": 1,
    "explain": 1,
    "options": 1,
    "plan": 2,
    "apply": 1,
    "secrets-check": 1,
    "schedule-list": 1,
    "schedule-run": 1,
    "testbed-status": 1,
    "image-list": 1,
    "generations": 1,
    "rollback": 1,
    "confirm": 1,
}


def format_marker(kind: str) -> str:
    return f"orchestrate.{kind}/{SHAPES[kind]}"


def document(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` marked as a document of ``kind``."""
    if "format" in body:
        raise ValueError(f"a {kind} document's body has a key named format")
    return {"format": format_marker(kind), **body}


def dumps(doc: Mapping[str, Any], indent: int | None = 2) -> str:
    """A document as the commands print it: ``format`` first, then every key sorted, ASCII
    only; indented, or on one line (``indent=None``)."""
    body = {k: v for k, v in doc.items() if k != "format"}
    rest = json.dumps(body, indent=indent, sort_keys=True)
    head = "{" + ("\n" + " " * indent if indent is not None else "")
    head += '"format": ' + json.dumps(doc["format"])
    if rest == "{}":
        return head + ("\n}" if indent is not None else "}") + "\n"
    return head + ("," if indent is not None else ", ") + rest[1:].lstrip(" ") + "\n"


def _path(path: str) -> str:
    return escape_controls(display_path(path))


def problem(p: Problem) -> dict[str, Any]:
    """One located problem: where (null when it has no place in a file), what, the hint, and
    the hosts it was found on (empty when it is not one host's own)."""
    return {
        "file": _path(p.loc.file) if p.loc else None,
        "line": p.loc.line if p.loc else None,
        "column": p.loc.col if p.loc else None,
        "message": _one_line(p.message),
        "hint": _one_line(p.hint) if p.hint else None,
        "hosts": list(p.hosts),
    }


# ---------------------------------------------------------------------------------- errors
def errors(
    problems: Iterable[Problem], exit_code: int = 1, notes: Iterable[str] = ()
) -> dict[str, Any]:
    """What a `--json` command prints instead of its result when it fails."""
    return document(
        "errors",
        {
            "exit_code": exit_code,
            "errors": [problem(p) for p in problems],
            "notes": [_one_line(n) for n in notes],
        },
    )


def error_message(message: str, exit_code: int) -> dict[str, Any]:
    """An error that has no place in a file (a bad flag value, a held lock, an interrupt)."""
    text = "\n".join(_one_line(line, 2000) for line in message.splitlines()) or "error"
    entry = {"file": None, "line": None, "column": None, "message": text, "hint": None}
    return document(
        "errors", {"exit_code": exit_code, "errors": [{**entry, "hosts": []}], "notes": []}
    )


def error(exc: OrchestrateError) -> dict[str, Any]:
    from orchestrator.errors import FleetErrors

    if isinstance(exc, FleetErrors):
        return errors(exc.problems, exc.exit_code, exc.notes)
    return error_message(str(exc), exc.exit_code)


# --------------------------------------------------------------------------------- compile
def compile_result(result: Any, warnings: Sequence[Problem], seconds: float) -> dict[str, Any]:
    """`compile --json`; ``result`` is an orchestrator.compiler.build.BuildResult."""
    return document(
        "compile",
        {
            "out_dir": _path(result.out_dir),
            "hosts": result.hosts,
            "roles": result.roles,
            "files": result.files,
            "seconds": round(seconds, 3),
            "warnings": [problem(w) for w in warnings],
        },
    )


# --------------------------------------------------------------------------------- explain
def explanation(x: Any) -> dict[str, Any]:
    """`explain --json`; ``x`` is an orchestrator.reporter.explain.Explanation."""
    from orchestrator.naming import PRIORITY_NAMES

    return document(
        "explain",
        {
            "host": x.host,
            "option": x.option,
            "value": x.value,
            "declared": escape_controls(x.declared),
            "type": x.type,
            "definitions": [
                {
                    "where": r.where,
                    "file": _path(r.loc.file) if r.loc else None,
                    "line": r.loc.line if r.loc else None,
                    "column": r.loc.col if r.loc else None,
                    "priority": r.priority,
                    "priority_name": PRIORITY_NAMES.get(r.priority, "custom"),
                    "value": r.written,
                    "when": r.condition,
                    "status": r.status,
                }
                for r in x.rows
            ],
            "reason": x.reason,
        },
    )


# --------------------------------------------------------------------------------- options
def options(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`options --json` (also with --library): the rows in path order."""
    return document("options", {"options": rows})


# ------------------------------------------------------------------------------ plan, show
def plan(p: Any) -> dict[str, Any]:
    """`plan --json` and `show --json`: the plan as it is saved, marked (``p`` is an
    orchestrator.executor.deploy.Plan; its keys are its own)."""
    doc: dict[str, Any] = p.to_json()  # carries its own marker: the saved file has it too
    if doc.get("format") != format_marker("plan"):
        raise ValueError("the plan's format marker and the documented shape disagree")
    return doc


# ----------------------------------------------------------------------------------- apply
def _rollout(r: Any) -> dict[str, Any]:
    return {
        "outcome": r.outcome,
        "generation": r.generation,
        "message": r.message,
        "checks": r.checks,
        "rebooted": r.rebooted,
        "recovered": r.recovered,
    }


def generations(host: str, listing: dict[str, Any]) -> dict[str, Any]:
    """`generations HOST --json`: the host's generations as it keeps them."""
    return document(
        "generations",
        {
            "host": host,
            "generations": listing["generations"],
            "pending": listing.get("pending"),
            "trial": listing.get("trial"),
        },
    )


def answers(kind: str, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`rollback --json` and `confirm --json`: each host's answer."""
    return document(kind, {"hosts": dict(sorted(answers.items()))})


def apply_result(result: Any) -> dict[str, Any]:
    """`apply --json`: the final table's numbers per host, and the tasks that failed
    (``result`` is an orchestrator.executor.deploy.ApplyResult)."""
    return document(
        "apply",
        {
            "run_id": result.run_id,
            "run_dir": _path(result.run_dir),
            "seconds": round(result.duration, 3),
            "interrupted": result.interrupted,
            "hosts": {
                h: {
                    "ok": s.ok,
                    "changed": s.changed,
                    "failed": s.failed,
                    "unreachable": s.unreachable,
                    "skipped": s.skipped,
                    "reached": s.reached,
                    "success": s.success,
                }
                for h, s in sorted(result.stats.items())
            },
            "failed_hosts": result.failed_hosts,
            "rollout": {h: _rollout(r) for h, r in sorted(result.rollouts.items())},
            "failures": [
                {
                    "host": t.host,
                    "status": t.status,
                    "task": _one_line(t.task, 200),
                    "message": _one_line(t.message, LINE),
                }
                for t in result.tasks
                if t.status in ("failed", "unreachable")
            ],
        },
    )


# --------------------------------------------------------------------------- secrets check
def secrets_check(report: Any) -> dict[str, Any]:
    """`secrets check --json` (``report`` is orchestrator.secrets.commands.CheckReport)."""
    return document(
        "secrets-check",
        {
            "ok": report.ok,
            "problems": [problem(p) for p in report.problems],
            "files": report.files,
            "admins": report.admins,
            "host_keys": report.host_keys,
        },
    )


# -------------------------------------------------------------------------------- schedule
def schedule_list(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`schedule list --json`: orchestrator.schedule.list_schedules, by name."""
    return document("schedule-list", {"schedules": rows})


def schedule_run(record: dict[str, Any]) -> dict[str, Any]:
    """`schedule run`: the record it appended to runs.jsonl, marked."""
    return document("schedule-run", record)


# --------------------------------------------------------------------------------- testbed
def testbed_state(running: bool, answering: bool) -> str:
    return "answering" if answering else ("running, sshd silent" if running else "stopped")


def testbed_status(rows: list[tuple[str, Any, bool, bool]]) -> dict[str, Any]:
    """`testbed status --json`: orchestrator.testbed.status's rows, by host."""
    return document(
        "testbed-status",
        {
            "hosts": {
                name: {
                    "container": h.container,
                    "arch": h.arch,
                    "address": h.address,
                    "port": h.port,
                    "running": running,
                    "answering": answering,
                    "state": testbed_state(running, answering),
                }
                for name, h, running, answering in rows
            }
        },
    )


# ---------------------------------------------------------------------------------- images
def image_list(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`image list --json`: orchestrator.images.plan.image_rows, one per image file."""
    return document("image-list", {"images": rows})


__all__ = [
    "SHAPES",
    "apply_result",
    "compile_result",
    "document",
    "dumps",
    "error",
    "error_message",
    "errors",
    "explanation",
    "format_marker",
    "image_list",
    "options",
    "plan",
    "problem",
    "schedule_list",
    "schedule_run",
    "secrets_check",
    "testbed_state",
    "testbed_status",
]
