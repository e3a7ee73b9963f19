"""How a plan shows a changed option value: a scalar as `old -> new`, a list per element (`+`
added, `-` removed), a mapping per key (`+`, `-`, `~`), recursively, each line naming its path.
Unchanged elements and keys are left out. Values are written whole, as JSON on one line with
control characters escaped, so that a value can neither be cut nor move the terminal."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import escape_controls

DEPTH = 6  # mapping levels below an option compared key by key; deeper, whole values
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Line:
    """One line of a change: ``mark`` is `+`, `-` or `~`; ``depth`` 1 is an element of the
    list named by the line above."""

    mark: str
    text: str
    depth: int = 0


def show(value: Any) -> str:
    """A value whole, as JSON on one line, safe to print."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return escape_controls(text)


def key_path(path: str, key: object) -> str:
    """``path`` one key deeper; a key that is not a plain name is quoted, as in a query."""
    name = str(key)
    return f"{path}.{name}" if _IDENT.fullmatch(name) else f"{path}.{show(name)}"


def value_lines(path: str, old: Any, new: Any, depth: int = 0) -> list[Line]:
    """The lines that show ``old`` becoming ``new`` at ``path`` (None: not set)."""
    if old == new:
        return []
    if old is None:
        return [Line("+", f"{path}: {show(new)}")]
    if new is None:
        return [Line("-", f"{path}: {show(old)}")]
    if isinstance(old, dict) and isinstance(new, dict) and depth < DEPTH:
        return _mapping_lines(path, old, new, depth)
    if isinstance(old, list) and isinstance(new, list):
        return _list_lines(path, old, new)
    return [Line("~", f"{path}: {show(old)} -> {show(new)}")]


def _mapping_lines(path: str, old: dict[Any, Any], new: dict[Any, Any], depth: int) -> list[Line]:
    out: list[Line] = []
    for key in sorted(set(old) | set(new), key=str):
        sub = key_path(path, key)
        if key not in new:
            out.append(Line("-", f"{sub}: {show(old[key])}"))
        elif key not in old:
            out.append(Line("+", f"{sub}: {show(new[key])}"))
        else:
            out.extend(value_lines(sub, old[key], new[key], depth + 1))
    return out


def _list_lines(path: str, old: list[Any], new: list[Any]) -> list[Line]:
    before, after = [show(v) for v in old], [show(v) for v in new]
    note = " (the same elements, in another order)" if Counter(before) == Counter(after) else ""
    out = [Line("~", f"{path}:{note}")]
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            out.extend(Line("-", text, 1) for text in before[i1:i2])
            out.extend(Line("+", text, 1) for text in after[j1:j2])
    return out
