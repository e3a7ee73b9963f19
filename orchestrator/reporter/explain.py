"""`orchestrate explain HOST PATH`: the final value, every definition and why the winner won."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import Loc, UsageError
from orchestrator.evaluator.engine import ABSENT, ERROR
from orchestrator.evaluator.expressions import plain
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.naming import DEFAULT_PRIORITY, PRIORITY_NAMES
from orchestrator.reporter.options import type_name


@dataclass(frozen=True)
class DefinitionRow:
    where: str
    priority: int
    written: Any
    condition: str | None
    status: str  # winner | overridden | inactive
    loc: Loc | None = None  # where the definition (or the option's default) is written


@dataclass(frozen=True)
class Explanation:
    host: str
    option: str
    value: Any
    declared: str
    type: str
    rows: tuple[DefinitionRow, ...]
    reason: str


def explain(ev: Evaluation, host: str, path: str) -> Explanation:
    if host not in ev.hosts:
        close = difflib.get_close_matches(host, list(ev.hosts), n=1)
        raise UsageError(
            f"unknown host {host!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        )
    he = ev.host_eval(host)
    key = tuple(path.split("."))
    decl = he.shape.trie.options.get(key)
    if decl is None:
        close = difflib.get_close_matches(path, he.shape.trie.names, n=1)
        raise UsageError(
            f"host {host} has no option {path}" + (f"; did you mean {close[0]}?" if close else "")
        )
    outcome = he.explained(decl)
    value = outcome.value if outcome else ERROR
    defs = he.shape.defs.get(key, [])
    active = outcome.active if outcome else ()
    kept = outcome.kept if outcome else ()
    rows = [
        DefinitionRow(
            str(d.loc),
            d.priority,
            plain(d.raw),
            d.block.when if d.block else None,
            "winner" if d in kept else "overridden" if d in active else "inactive",
            d.loc,
        )
        for d in defs
    ]
    if "default" in decl.schema:
        rows.append(
            DefinitionRow(
                f"{decl.loc} (option default)",
                DEFAULT_PRIORITY,
                plain(decl.schema["default"]),
                None,
                "winner" if outcome and outcome.from_default else "overridden",
                decl.loc,
            )
        )
    return Explanation(
        host,
        path,
        None if value in (ABSENT, ERROR) else value,
        str(decl.loc),
        type_name(decl.schema),
        tuple(rows),
        _reason(rows, kept, decl.schema),
    )


def _reason(rows: list[DefinitionRow], kept: Sequence[Any], schema: dict[str, Any]) -> str:
    winners = [r for r in rows if r.status == "winner"]
    inactive = sum(1 for r in rows if r.status == "inactive")
    if not winners:
        return "no definition is active and the option has no default, so it is unset"
    prio = winners[0].priority
    name = PRIORITY_NAMES.get(prio, f"priority {prio}")
    text = f"the best (lowest) priority among active definitions is {prio} ({name})"
    if len(winners) > 1:
        text += f"; its {len(winners)} definitions were merged"
        text += " (arrays concatenate in module order, objects merge key by key)"
    if inactive:
        text += f"; {inactive} definition(s) were dropped because their `when` is false"
    return text


def render_explain(x: Explanation) -> str:
    lines = [
        f"{x.option} on {x.host} = {json.dumps(x.value, sort_keys=True)}",
        f"  declared at {x.declared} (type: {x.type})",
        "  definitions:",
    ]
    for r in x.rows:
        mark = "*" if r.status == "winner" else " "
        prio = f"priority {r.priority} ({PRIORITY_NAMES.get(r.priority, 'custom')})"
        cond = f"  when {r.condition}" if r.condition else ""
        lines.append(
            f"  {mark} {r.where}  {prio}  {r.status}: {json.dumps(r.written, sort_keys=True)}{cond}"
        )
    lines.append(f"  why: {x.reason}")
    return "\n".join(lines) + "\n"
