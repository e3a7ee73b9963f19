"""Generated fleets and modules never end in an internal error: whatever the input, the
pipeline (load, evaluate, validate, compile) either writes a build or raises the tool's own
error, and never takes long. Bounded: a fixed number of examples, each small."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from orchestrator.errors import OrchestrateError

# hypothesis keeps notes (failing examples as patches) in its home: never in the checkout
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "orchestrate-hypothesis"))

NAMES = ["a", "b", "web", "web.port", "c"] * 4 + [
    "a..b",
    "x{{y}}",
    "",
    "true",
    "0x1F",
    "null",
    "1",
    "-x",
]
TYPES = ["string", "integer", "number", "boolean", "array", "object", "null"] * 3 + [
    "port",
    "int",
    7,
]
REFS = ["orchestrate:port", "orchestrate:ipv4"] * 4 + [
    "orchestrate:nope",
    "#/nope",
    "http://x/s",
    5,
]
PATTERNS = ["^[a-z]+$", "\\d+", "^a"] * 3 + ["([", "^(a|aa)+$", 3]
EXPRS = [
    "${config.a}",
    "${config.web.port}",
    "${hosts.h1.config.a}",
    "${hosts.nosuch.config.a}",
    "${host.name}",
    "${params.p}",
    "${wg_peers(hosts, host.name)}",
    "${scrape_jobs(hosts)}",
    "${scrape_targets(hosts, 'node')}",
    "${wg_peers(`[1]`, 'x')}",
    '${scrape_jobs(`{"h": {"config": 3}}`)}',
    "${secret('db/password')}",
    "${secret('../x')}",
    "${`1e400`}",
    "${`123456789012345678901234567890`}",
    "${length(`5`)}",
    "${config.}",
    "${",
    "text ${config.a} more",
    "{{ lookup('pipe', 'true') }}",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(EXPRS),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def schemas(draw: Any) -> Any:
    schema: dict[str, Any] = {}
    choice = draw(st.integers(0, 6))
    if choice in (0, 5, 6):
        schema["type"] = draw(st.sampled_from(TYPES))
    elif choice == 1:
        schema["$ref"] = draw(st.sampled_from(REFS))
    elif choice == 2:
        schema.update(type="string", pattern=draw(st.sampled_from(PATTERNS)))
    elif choice == 3:
        schema.update(type="object", additionalProperties=draw(st.sampled_from([True, False, {}])))
    else:
        schema["enum"] = draw(st.lists(SCALARS, min_size=1, max_size=3))
    if draw(st.booleans()):
        schema["default"] = draw(VALUES)
    if draw(st.integers(0, 5)) == 0:
        schema["minLength"] = draw(st.sampled_from([1, 1, 1, "abc", -1]))
    return draw(st.sampled_from([schema] * 12 + ["string", [1]]))


@st.composite
def modules(draw: Any) -> dict[str, Any]:
    module: dict[str, Any] = {}
    if draw(st.booleans()):
        module["options"] = draw(st.dictionaries(st.sampled_from(NAMES), schemas(), max_size=4))
    if draw(st.booleans()):
        module["config"] = draw(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4))
    if draw(st.integers(0, 3)) == 0:
        module["params"] = {"p": draw(schemas())}
    if draw(st.integers(0, 3)) == 0:
        module["config"] = [
            {"when": draw(st.sampled_from(["config.a", "`true`", "config.", "host.name"])),
             "set": draw(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=2))}
        ]  # fmt: skip
    if draw(st.integers(0, 4)) == 0:
        module["tasks"] = [{"name": "t", "ansible.builtin.debug": {"msg": draw(VALUES)}}]
        module["templates"] = {draw(st.sampled_from(["a.j2", "../x", "/abs", "d/b.j2"])): "x"}
    return module


@st.composite
def fleets(draw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pool = ["h1", "h2", "h3", "web-1", "true"] * 6 + ["all", "x\n"]
    names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    mods = draw(st.lists(modules(), min_size=1, max_size=3))
    hosts = {}
    for name in names:
        chosen = draw(st.lists(st.integers(0, len(mods) - 1), max_size=2))
        refs: list[Any] = [f"m{i}.yaml" for i in chosen]
        if "params" in mods[0] and draw(st.booleans()):
            refs.append({"use": "m0.yaml", "with": {"p": draw(VALUES)}})
        hosts[name] = {"builder": "x86_64", "modules": refs, "tags": draw(st.lists(
            st.sampled_from(["core", "on", "edge"] * 5 + ["x y"]), max_size=2))}  # fmt: skip
    fleet = {"name": "fuzz", "builders": {"x86_64": {"arch": "x86_64"}}, "hosts": hosts}
    return fleet, mods


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return "{}\n"


@settings(
    max_examples=int(os.environ.get("ORCHESTRATE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    # the same examples on every run, so that CI is repeatable; ORCHESTRATE_FUZZ_RANDOM=1 (and
    # ORCHESTRATE_FUZZ_EXAMPLES=3000) explores new ones by hand
    derandomize=not os.environ.get("ORCHESTRATE_FUZZ_RANDOM"),
)
@given(fleets())
def test_generated_fleets_never_cause_an_internal_error(
    case: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    from orchestrator.api import build

    fleet, mods = case
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "fleet.yaml"), "w", encoding="utf-8") as fh:
            fh.write(_dump(fleet))
        for i, m in enumerate(mods):
            with open(os.path.join(tmp, f"m{i}.yaml"), "w", encoding="utf-8") as fh:
                fh.write(_dump(m))
        started = time.monotonic()
        try:
            build(tmp, os.path.join(tmp, "out"))
        except OrchestrateError as exc:
            text = str(exc)
            assert "Traceback" not in text
            assert "\x1b" not in text
        assert time.monotonic() - started < 30  # generous: the machine may be busy
