"""Health checks of a rollout (a module's `checks:`): run after a host's apply changed it,
each tried every `interval` seconds until it passes or its `timeout` ends. A command runs on
the host; an HTTP request or a TCP connection starts here (`from: control`, the default), on
the host itself (`self`) or on another host of the fleet."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.executor import generations as gens
from orchestrator.naming import GENERATIONS_ROLE
from orchestrator.paths import shipped_roles_dir

DEFAULT_TIMEOUT = 30
DEFAULT_INTERVAL = 2
SAID = 300  # characters of a check's output a report quotes


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    output: str  # what the last attempt found, cut to SAID characters
    seconds: float


def describe(check: dict[str, Any]) -> str:
    """A check in a few words, as `plan` lists it."""
    if "command" in check:
        return f"command `{check['command']['run'][:80]}` on the host"
    if "http" in check:
        h = check["http"]
        return (
            f"HTTP {h.get('status', 200)} from {h['url'][:120]} (from {h.get('from', 'control')})"
        )
    t = check["tcp"]
    where = t.get("address", "the host")
    return f"TCP port {t['port']} of {where} (from {t.get('from', 'control')})"


def run_all(
    host: str, checks: list[dict[str, Any]], links: dict[str, gens.Link], address: str
) -> list[CheckResult]:
    """Every check of ``host``, side by side; ``links`` reach the hosts a check starts from,
    ``address`` is the host's deploy address (what a TCP check aims at by default)."""
    return gens.in_parallel(lambda c: _until(host, c, links, address), checks)


def _until(
    host: str, check: dict[str, Any], links: dict[str, gens.Link], address: str
) -> CheckResult:
    started = time.monotonic()
    deadline = started + int(check.get("timeout", DEFAULT_TIMEOUT))
    while True:
        passed, said = _attempt(host, check, links, address)
        now = time.monotonic()
        if passed or now >= deadline:
            return CheckResult(check["name"], passed, said[:SAID], round(now - started, 1))
        time.sleep(min(int(check.get("interval", DEFAULT_INTERVAL)), max(deadline - now, 0)))


def _attempt(
    host: str, check: dict[str, Any], links: dict[str, gens.Link], address: str
) -> tuple[bool, str]:
    try:
        if "command" in check:
            c = check["command"]
            got = gens.call(links[host], "probe", "command", stdin=c["run"], timeout=330)
            out = str(got.get("output", ""))
            ok = got.get("rc") == 0 and _matches(c.get("output"), out)
            return ok, f"exit {got.get('rc')}: {out.strip()}"
        if "http" in check:
            return _http(host, check["http"], links)
        return _tcp(host, check["tcp"], links, address)
    except gens.GenerationError as e:
        return False, f"could not run the check: {e}"


def _matches(pattern: str | None, text: str) -> bool:
    return pattern is None or re.search(pattern, text) is not None


def _origin(host: str, spec: dict[str, Any]) -> str | None:
    """The host a request starts from (None: this machine)."""
    origin = spec.get("from", "control")
    return None if origin == "control" else host if origin == "self" else str(origin)


def _probe(origin: str | None, links: dict[str, gens.Link], *args: str) -> dict[str, Any]:
    """One attempt from ``origin`` (None: this machine) by the host script's own probe: the
    same request whichever end makes it."""
    found: dict[str, Any]
    if origin is not None:
        found = gens.call(links[origin], "probe", *args, timeout=60)
    else:
        found = _host_script().probe(args[0], list(args[1:]), "")
    return found


@functools.cache
def _host_script() -> Any:
    """The generations role's host script, loaded as a module: it needs only the standard
    library, on this machine as on a host."""
    path = os.path.join(
        shipped_roles_dir(), GENERATIONS_ROLE, "module_utils", "orchestrate_generation_core.py"
    )
    spec = importlib.util.spec_from_file_location("orchestrate_generation_core", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _http(host: str, spec: dict[str, Any], links: dict[str, gens.Link]) -> tuple[bool, str]:
    got = _probe(_origin(host, spec), links, "http", str(spec["url"]))
    status, body = got.get("status"), str(got.get("body", ""))
    if status is None:
        return False, f"no answer: {got.get('error', '')}"
    ok = status == int(spec.get("status", 200)) and _matches(spec.get("body"), body)
    return ok, f"HTTP {status}: {body.strip()}"


def _tcp(
    host: str, spec: dict[str, Any], links: dict[str, gens.Link], address: str
) -> tuple[bool, str]:
    origin = _origin(host, spec)
    target = spec.get("address") or ("127.0.0.1" if origin == host else address)
    port = int(spec["port"])
    got = _probe(origin, links, "tcp", str(target), str(port))
    return bool(got.get("open")), f"{target}:{port} " + (
        "open" if got.get("open") else f"closed: {got.get('error', '')}"
    )
