"""The fast validation path never accepts what jsonschema rejects (it may only defer)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.validator import findings, option_validator
from orchestrator.validator.fast import compile_check
from orchestrator.validator.types import load_schema as _load

SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer"},
    {"type": "number", "minimum": 1, "maximum": 10},
    {"type": "string", "pattern": "^a"},
    {"type": ["string", "null"]},
    {"$ref": "orchestrate:port"},
    {"$ref": "orchestrate:ipv4"},
    {"$ref": "orchestrate:cidr"},
    {"$ref": "orchestrate:hostname"},
    {"$ref": "orchestrate:file-mode"},
    {"$ref": "orchestrate:duration"},
    {"enum": ["a", 1, True]},
    {"type": "array", "items": {"$ref": "orchestrate:port"}, "minItems": 1},
    {"type": "object", "additionalProperties": {"type": "string"}},
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["a"],
        "properties": {
            "a": {"type": "boolean"},
            "b": {"type": "array", "items": {"type": "string"}},
        },
    },
    {"type": "string", "minLength": 2, "maxLength": 3, "exclusiveMinimum": 0},
]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    1.5,
    80,
    70000,
    -1,
    "",
    "a",
    "abc",
    "10.0.0.1",
    "10.0.0.256",
    "10.0.0.0/24",
    "0640",
    "1h30m",
    "host.example.com",
    "-bad-",
    [],
    [80],
    [80, "x"],
    [0],
    {},
    {"a": True},
    {"a": 1},
    {"a": True, "b": ["x"]},
    {"a": True, "c": 1},
    {"x": "y"},
    {"x": 1},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(s)[:40] for s in SCHEMAS])
def test_fast_path_agrees_with_jsonschema(schema: dict[str, Any]) -> None:
    check = compile_check(schema)
    assert check is not None
    validator = option_validator(schema)
    for value in VALUES:
        valid = not findings(validator, value, "x")
        assert check(value) == valid, (schema, value)


def test_document_schemas_fast_path_is_sound() -> None:
    fleet = _load("fleet")
    check = compile_check(fleet, fleet)
    assert check is not None
    good = {"name": "a", "hosts": {"h": {"builder": "b", "modules": ["x", {"use": "y"}]}}}
    assert check(good)
    for bad in (
        {"name": "A", "hosts": {}},
        {"name": "a", "hosts": {"h": {"builder": "b", "modules": [{"use": "y", "x": 1}]}}},
        {"name": "a", "hosts": {"h": {}}},
        {"name": "a", "hosts": {}, "extra": 1},
        {"name": "a", "hosts": {"h": {"builder": "b", "deploy": {"port": 0}}}},
    ):
        assert not check(bad), bad
