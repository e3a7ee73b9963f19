"""`orchestrate options`: every declared option with its type, default, description and file."""

from __future__ import annotations

import difflib
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.evaluator.expressions import plain
from orchestrator.evaluator.fleet import Evaluation


def type_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):  # as it is written: `$ref: "orchestrate:port"`
        return f'$ref "{ref}"'

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


def library_rows() -> list[dict[str, Any]]:
    """Every option of the shipped module library (what `options --library` prints)."""
    from orchestrator.loader.library import library_modules

    rows = []
    for name, f in library_modules().items():
        for decl in f.options:
            row: dict[str, Any] = {
                "path": decl.name,
                "type": type_name(decl.schema),
                "declared": f"{name}:{decl.loc.line}",
                "module": name,
                "role": f.role,
            }
            if "default" in decl.schema:
                row["default"] = plain(decl.schema["default"])
            if decl.schema.get("description"):
                row["description"] = decl.schema["description"]
            rows.append(row)
    return rows


def library_markdown() -> str:
    """docs/options.md: the shipped modules and their options."""
    import json

    out = [
        "# Options of the shipped modules",
        "",
        "Generated from `orchestrator/library/` by "
        "`python3 -m orchestrator.compiler.rolespecs --write`; a test fails when it is stale. "
        'A type `$ref "orchestrate:NAME"` is a shared type (`schemas/types.schema.json`), '
        'declared as `{$ref: "orchestrate:port"}`: there is no `type: port`. '
        "A fleet imports a module as `orchestrate:PATH`; `orchestrate options` lists what a "
        "fleet declares, `orchestrate options --library` what ships.",
    ]
    current = None
    for row in library_rows():
        if row["module"] != current:
            current = row["module"]
            role = f" (role `{row['role']}`)" if row["role"] else ""
            out += ["", f"## `{current}`{role}", "", "| option | type | default | description |"]
            out.append("|---|---|---|---|")
        default = f"`{json.dumps(row['default'])}`" if "default" in row else ""
        desc = str(row.get("description", "")).replace("|", "\\|")
        out.append(f"| `{row['path']}` | {row['type']} | {default} | {desc} |")
    return "\n".join(out) + "\n"
