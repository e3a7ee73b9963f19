"""`orchestrate options`: every declared option with its type, default, description and file."""

from __future__ import annotations

import difflib
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.evaluator.expressions import plain
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.validator.schemas import TYPE_PREFIX


def type_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref[len(TYPE_PREFIX) :] if ref.startswith(TYPE_PREFIX) else ref
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_name(schema.get('items'))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_name(schema['additionalProperties'])}"
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def describe_options(ev: Evaluation, path: str | None) -> list[dict[str, Any]]:
    decls = ev.option_decls()
    names = sorted(decls)
    if path:
        chosen = [n for n in names if n == path or n.startswith(path + ".")]
        if not chosen:
            close = difflib.get_close_matches(path, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"no option {path} is declared{hint}")
        names = chosen
    rows = []
    for n in names:
        decl, hosts = decls[n]
        row: dict[str, Any] = {
            "path": n,
            "type": type_name(decl.schema),
            "declared": str(decl.loc),
            "hosts": len(hosts),
        }
        if "default" in decl.schema:
            row["default"] = plain(decl.schema["default"])
        if decl.schema.get("description"):
            row["description"] = decl.schema["description"]
        if decl.schema.get("deprecated"):
            row["deprecated"] = True
        rows.append(row)
    return rows
