"""A fast path for the option schemas most fleets use (types, ranges, patterns, enums, items,
properties): a compiled predicate that says "certainly valid". Anything it cannot decide, or any
value it rejects, goes to jsonschema, which also writes the error message. On a 10,000-host
fleet this avoids a million jsonschema validations."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from orchestrator.validator.patterns import PatternError, PatternTimeout, search
from orchestrator.validator.types import shared_type, type_name

Check = Callable[[Any], bool]
_IGNORED = {"description", "default", "examples", "deprecated", "title", "$comment"}
_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def compile_check(schema: Any, root: dict[str, Any] | None = None) -> Check | None:
    """A predicate for ``schema``, or None when it uses keywords this fast path does not know."""
    if schema is True or schema == {}:
        return lambda v: True
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and root is not None:
        target = root.get("$defs", {}).get(ref[len("#/$defs/") :])
        rest = {k for k in schema if k != "$ref" and k not in _IGNORED}
        if target is None or rest:
            return None
        return compile_check(target, root)
    if isinstance(ref, str):
        name = type_name(ref)
        if name is None:
            return None
        base = shared_type(name)
        if base is None:
            return None
        schema = {**base, **{k: v for k, v in schema.items() if k != "$ref"}}
    checks: list[Check] = []
    for key, arg in schema.items():
        if key in _IGNORED:
            continue
        made = _keyword(key, arg, schema, root)
        if made is None:
            return None
        checks.append(made)
    return _all(checks)


def _all(checks: list[Check]) -> Check:
    """A check that holds when every one of ``checks`` does (one or two: without a loop, for
    they run a million times on a large fleet)."""
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    return lambda v: all(c(v) for c in checks)


def _keyword(
    key: str, arg: Any, schema: dict[str, Any], root: dict[str, Any] | None
) -> Check | None:
    simple = _simple(key, arg)
    if simple is not None:
        return simple
    if key in ("$schema", "$id", "$defs"):
        return lambda v: True
    if key in ("oneOf", "anyOf") and isinstance(arg, list):
        branches = [compile_check(s, root) for s in arg]
        if any(b is None for b in branches):
            return None
        ok = [b for b in branches if b is not None]
        if key == "anyOf":
            return lambda v: any(b(v) for b in ok)
        return lambda v: sum(1 for b in ok if b(v)) == 1
    if key == "propertyNames":
        names = compile_check(arg, root)
        return (
            None
            if names is None
            else (lambda v: not isinstance(v, dict) or all(names(k) for k in v))
        )
    if key == "items":
        inner = compile_check(arg, root)
        if inner is None:
            return None
        return lambda v: not isinstance(v, list) or all(map(inner, v))
    if key == "properties":
        return _properties(arg, root)
    if key == "additionalProperties":
        return _additional(arg, set(schema.get("properties", {})), root)
    if key == "required" and isinstance(arg, list):
        return lambda v: not isinstance(v, dict) or all(k in v for k in arg)
    return None


def _simple(key: str, arg: Any) -> Check | None:
    if key == "type":
        names = arg if isinstance(arg, list) else [arg]
        if not all(n in _TYPES for n in names):
            return None
        preds = [_TYPES[n] for n in names]
        if len(preds) == 1:
            return preds[0]
        return lambda v: any(p(v) for p in preds)
    if key == "enum" and isinstance(arg, list):
        return lambda v: any(type(v) is type(c) and v == c for c in arg)
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return _bound(key, arg)
    if key in ("minLength", "maxLength", "minItems", "maxItems") and isinstance(arg, int):
        return _length(key, arg)
    if key == "pattern" and isinstance(arg, str):
        return lambda v: not isinstance(v, str) or _matches(arg, v)
    if key == "format":
        return _format(arg)
    return None


def _bound(key: str, limit: Any) -> Check:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    ops: dict[str, Check] = {
        "minimum": lambda v: not number(v) or v >= limit,
        "maximum": lambda v: not number(v) or v <= limit,
        "exclusiveMinimum": lambda v: not number(v) or v > limit,
        "exclusiveMaximum": lambda v: not number(v) or v < limit,
    }
    return ops[key]


def _length(key: str, n: int) -> Check:
    kind: tuple[type[str] | type[list[Any]], ...] = (str,) if key.endswith("Length") else (list,)
    if key.startswith("min"):
        return lambda v: not isinstance(v, kind) or len(v) >= n
    return lambda v: not isinstance(v, kind) or len(v) <= n


def _format(name: Any) -> Check | None:
    if name != "ipv4":
        return None

    def ipv4(v: Any) -> bool:
        if not isinstance(v, str):
            return True
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            return False
        return True

    return ipv4


def _properties(props: Any, root: dict[str, Any] | None) -> Check | None:
    if not isinstance(props, dict):
        return None
    compiled = {k: compile_check(s, root) for k, s in props.items()}
    if any(c is None for c in compiled.values()):
        return None
    checks: dict[str, Check] = {k: c for k, c in compiled.items() if c is not None}
    return lambda v: not isinstance(v, dict) or all(checks[k](v[k]) for k in checks if k in v)


def _additional(arg: Any, known: set[str], root: dict[str, Any] | None) -> Check | None:
    if arg is True:
        return lambda v: True
    if arg is False:
        return lambda v: not isinstance(v, dict) or all(k in known for k in v)
    inner = compile_check(arg, root)
    if inner is None:
        return None
    return lambda v: (
        not isinstance(v, dict) or all(inner(x) for k, x in v.items() if k not in known)
    )


def _matches(pattern: str, text: str) -> bool:
    """A pattern that cannot be decided quickly is not "certainly valid": jsonschema says why."""
    try:
        return search(pattern, text)
    except (PatternTimeout, PatternError):
        return False
