"""The shipped schemas and the shared types option schemas name as ``orchestrate:NAME``: read
by the validator, the fast checks, the merge rules and the argument specs alike."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from orchestrator.paths import orchestrate_name, orchestrate_ref


def schema_path(name: str) -> str:
    """The file path of a shipped schema, e.g. ``fleet`` -> .../schemas/fleet.schema.json."""
    return str(resources.files("orchestrator") / "schemas" / f"{name}.schema.json")


@cache
def load_schema(name: str) -> dict[str, Any]:
    with open(schema_path(name), encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def shared_type(name: str) -> dict[str, Any] | None:
    """The schema of a shared type, for docs and merge decisions."""
    found: dict[str, Any] | None = load_schema("types")["$defs"].get(name)
    return found


def type_name(ref: object) -> str | None:
    """NAME of a `$ref` to a shared type, ``orchestrate:NAME``; None for any other `$ref`."""
    return orchestrate_name(ref)


def type_ref(name: str) -> str:
    """The `$ref` of a shared type: ``orchestrate:NAME``."""
    return orchestrate_ref(name)
