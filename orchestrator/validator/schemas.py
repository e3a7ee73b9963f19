"""JSON Schema (Draft 2020-12) validation of fleet files and option values.

The project's schemas ship as package data; option schemas may refer to the shared types as
``{"$ref": "orchestrate:NAME"}``. Every error is mapped back to the position of the offending
value, and unknown keys get a "did you mean" hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orchestrator.errors import Loc, Problem, excerpt, one_line, quoted
from orchestrator.loader.yamlfile import locate
from orchestrator.validator.patterns import PatternError, PatternTimeout, compile_pattern, search
from orchestrator.validator.types import load_schema, shared_type, type_name, type_ref


@cache
def _registry() -> Registry[Any]:
    types = load_schema("types")
    pairs = []
    for name, schema in types["$defs"].items():
        contents = {"$schema": types["$schema"], **schema}
        pairs.append((type_ref(name), Resource.from_contents(contents, DRAFT202012)))
    return Registry().with_resources(pairs)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "string"):
        return
    try:
        if not search(pattern, instance):
            yield ValidationError(f"{quoted(instance)} does not match {quoted(pattern, 80)}")
    except PatternTimeout:
        yield ValidationError(_too_slow(pattern, instance))


def _too_slow(pattern: str, text: str) -> str:
    return (
        f"matching {quoted(pattern, 80)} against {quoted(text)} took too long "
        "(the pattern backtracks catastrophically: simplify it)"
    )


def _matching(patterns: Any, key: str) -> list[str]:
    """The patterns of ``patterns`` that match ``key``; a pattern that times out matches."""
    found = []
    for p in patterns:
        try:
            if search(p, key):
                found.append(p)
        except PatternTimeout:
            found.append(p)  # reported by the value's own check; never a silent pass
    return found


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for key, value in instance.items():
        for p in _matching(patterns, key):
            yield from validator.descend(value, patterns[p], path=key, schema_path=p)


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    unknown = [k for k in instance if k not in known and not _matching(patterns, k)]
    if validator.is_type(extra, "object"):
        for key in unknown:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and unknown:
        yield ValidationError(f"unknown keys: {', '.join(excerpt(k) for k in unknown[:5])}")


# Draft 2020-12 with the fleet's pattern semantics: ECMA-262 anchors, bounded matching time
FleetValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


@cache
def _document_validator(name: str) -> Any:
    return FleetValidator(load_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _document_fast(name: str) -> Any:
    from orchestrator.validator.fast import compile_check

    schema = load_schema(name)
    return compile_check(schema, schema)


def option_validator(schema: dict[str, Any]) -> Any:
    """A validator for one option's schema, resolving ``orchestrate:`` types."""
    return FleetValidator(
        schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


# type names people write from other languages, and what JSON Schema calls them
TYPE_HINTS = {
    "bool": "write type: boolean",
    "int": "write type: integer",
    "float": "write type: number",
    "str": "write type: string",
    "list": "write type: array",
    "dict": "write type: object",
    "map": "write type: object",
}
JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def check_option_schema(schema: Any, loc: Loc, what: str = "option") -> list[Problem]:
    """Problems with a declared option (or parameter) schema itself, not with a value: every
    one that would otherwise surface later as a crash, a network fetch or a hang."""
    if not isinstance(schema, dict | bool):
        return [Problem(loc, f"invalid {what} schema: expected a mapping, got {excerpt(schema)}")]
    found = _type_names(schema, loc, what)
    if found:
        return found
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = ".".join(map(str, exc.path))
        at = f" at {where}" if where else ""
        return [Problem(loc, f"invalid {what} schema{at}: {_message(exc)}")]
    except (RecursionError, ValueError, TypeError) as exc:
        return [Problem(loc, f"invalid {what} schema: {excerpt(str(exc), 80)}")]
    return _refs_and_patterns(schema, schema, loc, what)


def _type_names(schema: Any, loc: Loc, what: str) -> list[Problem]:
    """`type: port` and friends, with the fix, before the metaschema's vaguer message."""
    out = []
    for node in _schemas_in(schema):
        types = node.get("type")
        for name in types if isinstance(types, list) else [types]:
            if not isinstance(name, str) or name in JSON_TYPES:
                continue
            if shared_type(name) is not None:
                hint = f'use $ref: "{type_ref(name)}"'
            else:
                hint = TYPE_HINTS.get(name, f"JSON Schema types: {', '.join(JSON_TYPES)}")
            out.append(Problem(loc, f"invalid {what} schema: unknown type {excerpt(name)}", hint))
    return out


def _refs_and_patterns(root: Any, schema: Any, loc: Loc, what: str) -> list[Problem]:
    out = []
    for node in _schemas_in(schema):
        ref = node.get("$ref")
        if isinstance(ref, str):
            problem = _ref_problem(root, ref)
            if problem:
                out.append(Problem(loc, f"invalid {what} schema: {problem}", _REF_HINT))
        patterns = [node.get("pattern"), *dict(node.get("patternProperties") or {})]
        for p in patterns:
            if isinstance(p, str):
                try:
                    compile_pattern(p)
                except PatternError as exc:
                    out.append(
                        Problem(loc, f"invalid {what} schema: pattern {excerpt(p, 80)}: {exc}")
                    )
    return out


_REF_HINT = 'refer to a shared type as "orchestrate:NAME" or to "#/$defs/NAME" of this schema'


def _ref_problem(root: Any, ref: str) -> str | None:
    name = type_name(ref)
    if name is not None:
        if shared_type(name) is None:
            known = ", ".join(sorted(load_schema("types")["$defs"]))
            return f"unknown shared type {excerpt(ref)} (known types: {known})"
        return None
    if not ref.startswith("#"):
        return f"$ref {excerpt(ref)} points outside the schema"
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return f"$ref {excerpt(ref)} points to nothing in this schema"
    return None


def _schemas_in(schema: Any) -> list[dict[str, Any]]:
    """``schema`` and every subschema below it (through any keyword), iteratively."""
    out: list[dict[str, Any]] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            for key, value in node.items():
                if key in ("enum", "const", "default", "examples", "description"):
                    continue
                if isinstance(value, dict):
                    stack.append(value)
                    if key in ("properties", "patternProperties", "$defs", "dependentSchemas"):
                        stack.extend(v for v in value.values() if isinstance(v, dict))
                elif isinstance(value, list):
                    stack.extend(v for v in value if isinstance(v, dict))
    return out


@dataclass(frozen=True)
class Finding:
    """One schema violation: where in the value (a key path), what, and a hint."""

    path: tuple[Any, ...]
    message: str
    hint: str | None = None


def document_problems(doc: Any, schema_name: str, file: str) -> list[Problem]:
    """Problems of a whole fleet file against one of the shipped schemas."""
    fallback = Loc(file, 1, 1)
    fast = _document_fast(schema_name)
    if fast is not None and fast(doc):
        return []  # certainly valid; jsonschema runs only to explain a problem
    return [
        Problem(locate(doc, f.path, fallback) or fallback, f.message, f.hint)
        for f in findings(_document_validator(schema_name), doc, "")
    ]


def findings(validator: Any, value: Any, what: str) -> list[Finding]:
    """Every violation of ``value``; ``what`` names the value (an option path) in messages."""
    out: list[Finding] = []
    for error in sorted(
        validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))
    ):
        out.extend(_explain(error, what))
    return out


def _explain(error: ValidationError, what: str) -> list[Finding]:
    path = tuple(error.absolute_path)
    where = ".".join([*([what] if what else []), *map(str, path)]) or "document"
    if "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
        # a bad key: point at the key itself, and name the mapping it is in
        return [Finding((*path, error.instance), f"{where}: {_message(error)}")]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return _unknown_keys(error, path, where)
    if error.validator in ("oneOf", "anyOf") and error.context:
        inner = best_match(error.context)
        at = tuple(inner.absolute_path) or path
        return [Finding(at, f"{where}: {_message(inner)}", _type_hint(at, inner.instance))]
    return [Finding(path, f"{where}: {_message(error)}", _type_hint(path, error.instance))]


def _type_hint(path: tuple[Any, ...], value: Any) -> str | None:
    """`type: port` in a module's option or parameter: the fix, not just "not one of"."""
    if not path or path[-1] != "type" or not isinstance(value, str) or value in JSON_TYPES:
        return None
    if shared_type(value) is not None:
        return f'use $ref: "{type_ref(value)}"'
    close = difflib.get_close_matches(value, JSON_TYPES, n=1)
    return TYPE_HINTS.get(value) or (f"did you mean {close[0]!r}?" if close else None)


def _message(error: ValidationError | SchemaError) -> str:
    """What is wrong, in words that show at most an excerpt of the value (jsonschema's own
    messages print the whole value)."""
    kind, arg, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        return f"expected {_expected(arg)}, got {_describe(value)}"
    if kind == "enum" and isinstance(arg, list):
        choices = ", ".join(excerpt(c) for c in arg[:12]) + (", ..." if len(arg) > 12 else "")
        return f"{excerpt(value)} is not one of {choices}"
    if kind == "const":
        return f"{excerpt(value)} is not {excerpt(arg)}"
    if kind in _BOUNDS:
        return f"{excerpt(value)} {_BOUNDS[kind]} {excerpt(arg)}"
    if kind in _SIZES:
        noun, relation = _SIZES[kind]
        return f"{_describe(value)} has {relation} {arg} {noun}"
    if kind == "required" and isinstance(value, dict) and isinstance(arg, list):
        missing = [k for k in arg if k not in value]
        return f"missing required key(s): {', '.join(excerpt(k) for k in missing[:5])}"
    if kind == "format":
        return f"{excerpt(value)} is not a valid {excerpt(arg)}"
    if kind in ("pattern", "additionalProperties") or kind not in _ECHOING:
        return one_line(error.message, 200)
    return f"{_describe(value)} does not satisfy {kind}"


_BOUNDS = {
    "minimum": "is less than the minimum of",
    "maximum": "is greater than the maximum of",
    "exclusiveMinimum": "must be more than",
    "exclusiveMaximum": "must be less than",
    "multipleOf": "is not a multiple of",
}
_SIZES = {
    "minLength": ("characters", "fewer than"),
    "maxLength": ("characters", "more than"),
    "minItems": ("items", "fewer than"),
    "maxItems": ("items", "more than"),
    "minProperties": ("keys", "fewer than"),
    "maxProperties": ("keys", "more than"),
}
# keywords whose jsonschema message starts with the whole instance
_ECHOING = {
    "uniqueItems", "contains", "not", "oneOf", "anyOf", "allOf", "if", "propertyNames",
    "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems",
    "prefixItems", "items", "$ref", "$dynamicRef", "minContains", "maxContains",
}  # fmt: skip


def _expected(types: Any) -> str:
    if isinstance(types, list):
        return " or ".join(types)
    return str(types)


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if value is None:
        return "null"
    for cls in (bool, int, float, str):
        if isinstance(value, cls):
            return f"{kind[cls]} {excerpt(value)}"
    return "array" if isinstance(value, list) else "object"


def _unknown_keys(error: ValidationError, path: tuple[Any, ...], where: str) -> list[Finding]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = list(schema.get("properties", {}))
    out = []
    instance: dict[str, Any] = error.instance  # type: ignore[assignment]
    for key in instance:
        if key in known or _matching(schema.get("patternProperties", {}), key):
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        place = f" in {where}" if where != "document" else ""
        out.append(Finding((*path, key), f"unknown key {quoted(key)}{place}", hint))
    return out
