"""Merging the kept definitions of one option by its type (arrays concatenate, objects merge
key by key, scalars must agree), as NixOS's module system does."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import Loc
from orchestrator.validator.types import shared_type, type_name


class Conflict(Exception):
    """Two definitions that cannot be merged; ``places`` are (value, location) pairs."""

    def __init__(self, where: str, places: list[tuple[Any, Loc | None]]) -> None:
        super().__init__(where)
        self.where = where
        self.places = places


def kind_of(schema: Any) -> str:
    """``array``, ``object`` or ``scalar``: how definitions of an option with this schema merge."""
    if not isinstance(schema, dict):
        return "scalar"
    name = type_name(schema.get("$ref"))
    if name is not None:
        return kind_of(shared_type(name))
    kind = schema.get("type")
    if kind in ("array", "object"):
        return str(kind)
    return "scalar"


def same(a: Any, b: Any) -> bool:
    """Equality that tells 1 from true and 1 from 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def merge(kind: str, items: list[tuple[Any, Loc | None]], name: str) -> Any:
    """Merge definition values (already filtered to one priority) in module order."""
    if len(items) == 1:
        return items[0][0]
    if kind == "array" and all(isinstance(v, list) for v, _ in items):
        out: list[Any] = []
        for v, _ in items:
            out.extend(v)
        return out
    if kind == "object" and all(isinstance(v, dict) for v, _ in items):
        return _merge_objects(items, name)
    return _merge_scalars(items, name)


def _merge_scalars(items: list[tuple[Any, Loc | None]], name: str) -> Any:
    first = items[0][0]
    if all(same(first, v) for v, _ in items[1:]):
        return first
    raise Conflict(name, items)


def _merge_objects(items: list[tuple[Any, Loc | None]], name: str) -> dict[str, Any]:
    keys: dict[str, list[tuple[Any, Loc | None]]] = {}
    for value, loc in items:
        for k, v in value.items():
            keys.setdefault(k, []).append((v, loc))
    out: dict[str, Any] = {}
    for k, group in keys.items():
        sub = f"{name}.{k}"
        if all(isinstance(v, list) for v, _ in group):
            out[k] = merge("array", group, sub)
        elif all(isinstance(v, dict) for v, _ in group):
            out[k] = merge("object", group, sub)
        else:
            out[k] = _merge_scalars(group, sub)
    return out
