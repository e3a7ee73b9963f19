"""Expressions made into closures (orchestrator/evaluator/closures.py) give what jmespath's own
interpreter gives, for every kind of node they handle, on values of every JSON type."""

from __future__ import annotations

import itertools
from typing import Any

import jmespath
import pytest
from jmespath import functions as jfun

from orchestrator.evaluator.closures import closure

VALUES: list[Any] = [None, True, False, 0, 1, 2, -1.5, "", "a", "b", [], [0], {}, {"k": 1}]
EXPRESSIONS = [
    "a",
    "a.b",
    "a.b.c",
    "@",
    "`3`",
    "'x'",
    "a && b",
    "a || b",
    "!a",
    "!a.b",
    "a == b",
    "a != b",
    "a < b",
    "a <= b",
    "a > b",
    "a >= b",
    "a.b && c == 'x' || !d",
    "a == `1` && b != `true`",
    "length(a) == `0`",
    "contains(a, b)",
    "not_null(a, b)",
]


def _docs() -> list[Any]:
    out: list[Any] = [None, 7, "text", [1]]
    for a, b in itertools.product(VALUES, repeat=2):
        out.append({"a": a, "b": b, "c": "x", "d": a})
    out += [{"a": {"b": v, "c": "x"}, "c": "x"} for v in VALUES]
    return out


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "value", fn()
    except Exception as exc:  # the same failure, whatever it is
        return type(exc).__name__, None


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_a_closure_gives_what_jmespath_gives(source: str) -> None:
    compiled = jmespath.compile(source)
    made = closure(compiled.parsed)
    assert made is not None
    functions = jfun.Functions()
    options = jmespath.Options(custom_functions=functions)
    for doc in _docs():
        want = _outcome(lambda: compiled.search(doc, options=options))  # noqa: B023
        got = _outcome(lambda: made(doc, functions))  # noqa: B023
        assert got == want and type(got[1]) is type(want[1]), (source, doc)


@pytest.mark.parametrize("source", ["a[0]", "a[*].b", "a | b", "{x: a}", "a[?b]", "values(@)[0]"])
def test_other_nodes_are_left_to_jmespath(source: str) -> None:
    assert closure(jmespath.compile(source).parsed) is None
