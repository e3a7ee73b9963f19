"""JSON Schema (Draft 2020-12) validation of fleet files and option values.

The project's schemas ship as package data; option schemas may refer to the shared types as
``{"$ref": "orchestrate:NAME"}``. Every error is mapped back to the position of the offending
value, and unknown keys get a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orchestrator.errors import Loc, Problem
from orchestrator.loader.yamlfile import locate

TYPE_PREFIX = "orchestrate:"


def schema_path(name: str) -> str:
    """The file path of a shipped schema, e.g. ``fleet`` -> .../schemas/fleet.schema.json."""
    return str(resources.files("orchestrator") / "schemas" / f"{name}.schema.json")


@cache
def _load(name: str) -> dict[str, Any]:
    with open(schema_path(name), encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@cache
def _registry() -> Registry[Any]:
    types = _load("types")
    pairs = []
    for name, schema in types["$defs"].items():
        contents = {"$schema": types["$schema"], **schema}
        pairs.append((TYPE_PREFIX + name, Resource.from_contents(contents, DRAFT202012)))
    return Registry().with_resources(pairs)


def shared_type(name: str) -> dict[str, Any] | None:
    """The schema of a shared type, for docs and merge decisions."""
    found: dict[str, Any] | None = _load("types")["$defs"].get(name)
    return found


@cache
def _document_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_load(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _document_fast(name: str) -> Any:
    from orchestrator.validator.fast import compile_check

    schema = _load(name)
    return compile_check(schema, schema)


def option_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for one option's schema, resolving ``orchestrate:`` types."""
    return Draft202012Validator(
        schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def check_option_schema(schema: Any, loc: Loc) -> list[Problem]:
    """Problems with a declared option schema itself (not with a value)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [Problem(loc, f"invalid option schema: {exc.message}")]
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if (
        isinstance(ref, str)
        and ref.startswith(TYPE_PREFIX)
        and shared_type(ref[len(TYPE_PREFIX) :]) is None
    ):
        known = ", ".join(sorted(_load("types")["$defs"]))
        return [Problem(loc, f"unknown shared type {ref!r}", f"known types: {known}")]
    return []


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


def findings(validator: Draft202012Validator, value: Any, what: str) -> list[Finding]:
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
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        return _unknown_keys(error, path, where)
    if error.validator in ("oneOf", "anyOf") and error.context:
        inner = best_match(error.context)
        return [Finding(tuple(inner.absolute_path) or path, f"{where}: {_message(inner)}")]
    return [Finding(path, f"{where}: {_message(error)}")]


def _message(error: ValidationError) -> str:
    if error.validator == "type":
        return f"expected {_expected(error.validator_value)}, got {_describe(error.instance)}"
    if error.validator == "enum":
        choices = ", ".join(json.dumps(c) for c in error.validator_value)  # type: ignore[union-attr]
        return f"{json.dumps(error.instance)} is not one of {choices}"
    return error.message


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
            return f"{kind[cls]} {json.dumps(value)}"
    return "array" if isinstance(value, list) else "object"


def _unknown_keys(error: ValidationError, path: tuple[Any, ...], where: str) -> list[Finding]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = list(schema.get("properties", {}))
    out = []
    instance: dict[str, Any] = error.instance  # type: ignore[assignment]
    for key in instance:
        if key in known or any(re.search(p, key) for p in schema.get("patternProperties", {})):
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        place = f" in {where}" if where != "document" else ""
        out.append(Finding((*path, key), f"unknown key {key!r}{place}", hint))
    return out
