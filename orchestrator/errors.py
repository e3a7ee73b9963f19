"""The one exception tree of orchestrate: every user-facing error carries its source location.

Stages collect problems into a list and raise :class:`FleetErrors` once, so a run reports all of
them; the CLI is the single place that turns them into ``path:line:col: message`` lines.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from orchestrator import exitcodes

EXCERPT = 40  # characters of a value shown in a message
LINE = 600  # characters of one rendered problem, at most


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """A value as a message may show it: JSON-like, at most ``limit`` characters of it, with
    control characters (terminal escape sequences among them) written as escapes. Messages
    never echo a whole value: it may be a file read by mistake, or a secret."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, int | float):
        text = _number_text(value)
    else:
        text = _compact(value, limit + 1)
    cut = text[:limit]
    body = json.dumps(cut, ensure_ascii=False)[1:-1] if isinstance(value, str) else cut
    body = escape_controls(body)
    more = len(text) - len(cut)
    suffix = f"... ({more} more characters)" if more > 0 else ""
    return f'"{body}{suffix}"' if isinstance(value, str) else body + suffix


def quoted(text: object, limit: int = EXCERPT) -> str:
    """A name or an expression as a message shows it: Python-quoted, at most ``limit``
    characters, control characters escaped (values use :func:`excerpt`; so does anything that
    is not a string)."""
    if not isinstance(text, str):
        return excerpt(text, limit)
    cut = text[:limit]
    more = len(text) - len(cut)
    return escape_controls(repr(cut)) + (f"... ({more} more characters)" if more > 0 else "")


def _number_text(value: int | float) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    return repr(value)


def _compact(value: object, limit: int) -> str:
    """Containers in short form; only as much is rendered as can be shown."""
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            parts.append(f"{excerpt(str(k), 20)}: {_compact(v, 20)}")
            if sum(map(len, parts)) > limit:
                break
        return "{" + ", ".join(parts) + ("}" if len(parts) == len(value) else ", ...}")
    if isinstance(value, list | tuple):
        parts = []
        for v in value:
            parts.append(_compact(v, 20))
            if sum(map(len, parts)) > limit:
                break
        return "[" + ", ".join(parts) + ("]" if len(parts) == len(value) else ", ...]")
    return (
        excerpt(value, limit)
        if isinstance(value, str | int | float | bool) or value is None
        else f"<{type(value).__name__}>"
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """Control characters, C1 controls and bidirectional overrides as visible escapes, so that
    a message can neither move the cursor, recolour the terminal nor span two lines."""
    return _CONTROL.sub(
        lambda m: (
            f"\\u{ord(m.group()):04x}" if ord(m.group()) > 0xFF else f"\\x{ord(m.group()):02x}"
        ),
        text,
    )


def one_line(text: str, limit: int = LINE) -> str:
    """A message made safe to print: escaped and at most ``limit`` characters."""
    text = escape_controls(text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


class Loc(NamedTuple):
    """A position in a fleet file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{display_path(self.file)}:{self.line}:{self.col}"


def display_path(path: str) -> str:
    """Paths in messages are relative to the working directory when they are below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


@dataclass(frozen=True)
class Problem:
    """One problem in the user's input."""

    loc: Loc | None
    message: str
    hint: str | None = None
    # the hosts the problem was found on, when it is one host's (or a few hosts') own; not part
    # of its identity, so the same problem found on several hosts is reported once
    hosts: tuple[str, ...] = field(default=(), compare=False)

    def render(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        text = f"{where}{self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return one_line(text)


class OrchestrateError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = exitcodes.INVALID


class FleetErrors(OrchestrateError):
    """One or more problems in the fleet's files; nothing was written."""

    def __init__(self, problems: list[Problem], notes: tuple[str, ...] = ()) -> None:
        self.problems = _unique(problems)
        self.notes = notes  # said in the closing line, not counted among the problems
        super().__init__("\n".join([*(p.render() for p in self.problems), *notes]))


class UsageError(OrchestrateError):
    """A bad command line or a bad request to the library."""


def fail(loc: Loc | None, message: str, hint: str | None = None) -> FleetErrors:
    """Shorthand for a single-problem error, to be raised by the caller."""
    return FleetErrors([Problem(loc, message, hint)])


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out: list[Problem] = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
