"""`orchestrate query`: a JMESPath expression over the compiled fleet, with the hints a person
new to JMESPath needs (numbers in backticks, names with a dash in double quotes), and a note
when a plain path names a key that is not there (it answers null, as JMESPath does)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UsageError, quoted

# a dotted path of plain names and "quoted names": hosts."web-2".config.motd
_PATH = re.compile(
    r'\s*(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*")(?:\s*\.\s*(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\]|\\.)*"))*\s*\Z'
)
_SEGMENT = re.compile(r'[A-Za-z_][A-Za-z0-9_]*|"((?:[^"\\]|\\.)*)"')
# a bare name with a dash, outside quotes: hosts.web-2
_DASHED = re.compile(r"(?<![\w\"'`])([A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)+)")


@dataclass(frozen=True)
class Answer:
    value: Any
    note: str | None  # said on stderr: why a plain path answered null


def compile_expression(expr: str) -> Any:
    """The parsed expression, or a UsageError at <query>:1:COL with a hint."""
    import jmespath
    from jmespath import exceptions as jexc

    try:
        return jmespath.compile(expr)
    except RecursionError:
        raise UsageError("<query>: the expression is nested too deeply") from None
    except jexc.ParseError as exc:
        pos = exc.lex_position or 0
        hint = _parse_hint(expr, pos, str(getattr(exc, "token_value", "") or ""))
        raise UsageError(
            f"<query>:1:{pos + 1}: invalid JMESPath expression: {exc.msg}"
            + (f" (hint: {hint})" if hint else "")
        ) from None


def _parse_hint(expr: str, pos: int, token: str) -> str | None:
    dashed = _DASHED.search(expr)
    if dashed and (token.startswith("-") or expr[pos : pos + 1] == "-"):
        name = dashed.group(1)
        fixed = expr[: dashed.start()] + f'"{name}"' + expr[dashed.end() :]
        return f"a name with a dash is written in double quotes: {quoted(fixed, 80)}"
    number = re.match(r"-?[0-9]+(?:\.[0-9]+)?", expr[pos:])
    if number:
        n = number.group()
        return f"a number in JMESPath is written in backticks: `{n}` (a string: '{n}')"
    return None


def run_query(compiled: Any, expr: str, data: dict[str, Any]) -> Answer:
    from jmespath import exceptions as jexc

    try:
        value = compiled.search(data)
    except jexc.JMESPathError as exc:
        raise UsageError(f"<query>: {exc}") from None
    except TypeError:
        # jmespath compares only like with like and raises on the rest
        raise UsageError(
            "<query>: a comparison of values of different types (a number with a string?) "
            "(hint: numbers are `80` in backticks, strings '80' in single quotes; "
            "compare a number with a number)"
        ) from None
    note = _missing_key(expr, data) if value is None else None
    return Answer(value, note)


def _missing_key(expr: str, data: dict[str, Any]) -> str | None:
    """For a plain path that answers null: the first name that is not there, and the nearest
    one that is."""
    if not _PATH.match(expr):
        return None
    here: Any = data
    walked: list[str] = []
    for m in _SEGMENT.finditer(expr):
        name = m.group(1) if m.group(1) is not None else m.group()
        if not isinstance(here, dict):
            return None
        if name not in here:
            where = ".".join(walked) or "the fleet"
            lowered = {str(k).lower(): str(k) for k in here}
            near = difflib.get_close_matches(name.lower(), list(lowered), n=1)
            near = [lowered[k] for k in near]
            hint = f" (did you mean {quoted(near[0])}?)" if near else ""
            return f"note: {where} has no key {quoted(name)}{hint}; the answer is null"
        walked.append(m.group())
        here = here[name]
    return None
