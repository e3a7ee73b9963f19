"""JMESPath expressions made into Python closures once, to be evaluated for every host: the
conditions fleets write most (`config.x.enable && host.arch == 'aarch64'`, comparisons,
`!`, `||`, function calls) without walking the parsed tree node by node each time.

Each closure does what jmespath's own tree interpreter (jmespath 1.1.0, pinned) does for its
node, in the same order, with the same helpers, so a value, an error or a lazily computed option
comes out the same; an expression with any other kind of node is left to jmespath.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

from jmespath.visitor import TreeInterpreter

# (the value an expression is applied to, the function table) -> the result
Closure = Callable[[Any, Any], Any]

_COMPARE: dict[str, Callable[[Any, Any], Any]] = TreeInterpreter.COMPARATOR_FUNC


def _false(value: Any) -> bool:
    """JMESPath's falsehood, written as jmespath writes it (equality tests, in this order)."""
    return value == "" or value == [] or value == {} or value is None or value is False


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Number)


def _comparable(value: Any) -> bool:
    return _number(value) or isinstance(value, str)


def closure(node: dict[str, Any]) -> Closure | None:
    """The closure for a parsed expression, or None when it has a node not handled here."""
    kind = node["type"]
    if kind == "field":
        return _field(node["value"])
    if kind == "literal":
        literal = node["value"]
        return lambda v, f: literal
    if kind == "current":
        return lambda v, f: v
    parts = [closure(child) for child in node["children"]]
    if any(p is None for p in parts):
        return None
    made = [p for p in parts if p is not None]
    if kind == "subexpression":
        return _chain(made)
    if kind == "function_expression":
        name = node["value"]
        return lambda v, f: f.call_function(name, [p(v, f) for p in made])
    return _operator(kind, node.get("value"), made)


def _field(key: str) -> Closure:
    def field(value: Any, functions: Any) -> Any:
        try:
            return value.get(key)
        except AttributeError:
            return None

    return field


def _chain(parts: list[Closure]) -> Closure:
    def chain(value: Any, functions: Any) -> Any:
        for part in parts:
            value = part(value, functions)
        return value

    return chain


def _operator(kind: str, op: Any, parts: list[Closure]) -> Closure | None:
    if kind == "and_expression":
        a, b = parts
        return lambda v, f: m if _false(m := a(v, f)) else b(v, f)
    if kind == "or_expression":
        a, b = parts
        return lambda v, f: b(v, f) if _false(m := a(v, f)) else m
    if kind == "not_expression":
        (a,) = parts
        return lambda v, f: False if _number(r := a(v, f)) and r == 0 else not r
    if kind == "comparator" and op in _COMPARE:
        return _comparator(op, *parts)
    return None


def _comparator(op: str, a: Closure, b: Closure) -> Closure:
    compare = _COMPARE[op]
    if op in ("eq", "ne"):
        return lambda v, f: compare(a(v, f), b(v, f))

    def ordered(value: Any, functions: Any) -> Any:
        left, right = a(value, functions), b(value, functions)
        if not (_comparable(left) and _comparable(right)):
            return None
        return compare(left, right)

    return ordered
