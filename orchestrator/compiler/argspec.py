"""Option schemas to Ansible role argument specs, so Ansible itself validates role arguments."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.loader.fleet import OptionDecl
from orchestrator.validator.types import shared_type, type_name

_TYPES = {
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "string": "str",
    "array": "list",
    "object": "dict",
}


def arg_name(role: str, decl: OptionDecl) -> str:
    """The role argument that carries an option: the role's name, then the option's path."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join((role, *decl.path)))


def _resolved(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    name = type_name(schema.get("$ref"))
    if name is not None:
        base = shared_type(name) or {}
        return {**base, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def arg_spec(decl: OptionDecl) -> dict[str, Any]:
    """One entry of meta/argument_specs.yml for an option."""
    schema = _resolved(decl.schema)
    spec: dict[str, Any] = {"type": _TYPES.get(str(schema.get("type")), "raw")}
    desc = schema.get("description") or f"The option {decl.name}."
    spec["description"] = [str(desc), f"Option {decl.name}."]
    if spec["type"] == "list":
        item = _resolved(schema.get("items"))
        if isinstance(item.get("type"), str) and item["type"] in _TYPES:
            spec["elements"] = _TYPES[item["type"]]
    if "enum" in schema and all(isinstance(c, str | int) for c in schema["enum"]):
        spec["choices"] = list(schema["enum"])
    spec["required"] = False
    return spec
