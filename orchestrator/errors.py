"""The one exception tree of orchestrate: every user-facing error carries its source location.

Stages collect problems into a list and raise :class:`FleetErrors` once, so a run reports all of
them; the CLI is the single place that turns them into ``path:line:col: message`` lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple


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

    def render(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        text = f"{where}{self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class OrchestrateError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1


class FleetErrors(OrchestrateError):
    """One or more problems in the fleet's files; nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = _unique(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


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
