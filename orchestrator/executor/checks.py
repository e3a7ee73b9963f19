"""Health checks of a rollout (a module's `checks:`): run after a host's apply changed it,
each tried every `interval` seconds until it passes or its `timeout` ends. A command runs on
the host; an HTTP request or a TCP connection starts here (`from: control`, the default), on
the host itself (`self`) or on another host of the fleet."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from orchestrator.executor import generations as gens

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


def _http(host: str, spec: dict[str, Any], links: dict[str, gens.Link]) -> tuple[bool, str]:
    origin = _origin(host, spec)
    if origin is None:
        got = _http_here(spec["url"])
    else:
        got = gens.call(links[origin], "probe", "http", spec["url"], timeout=60)
    status, body = got.get("status"), str(got.get("body", ""))
    if status is None:
        return False, f"no answer: {got.get('error', '')}"
    ok = status == int(spec.get("status", 200)) and _matches(spec.get("body"), body)
    return ok, f"HTTP {status}: {body.strip()}"


def _http_here(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return {"status": resp.status, "body": resp.read(65536).decode("utf-8", "replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read(65536).decode("utf-8", "replace")}
    except (OSError, ValueError) as e:
        return {"status": None, "error": str(e)}


def _tcp(
    host: str, spec: dict[str, Any], links: dict[str, gens.Link], address: str
) -> tuple[bool, str]:
    origin = _origin(host, spec)
    target = spec.get("address") or ("127.0.0.1" if origin == host else address)
    port = int(spec["port"])
    if origin is not None:
        got = gens.call(links[origin], "probe", "tcp", str(target), str(port), timeout=60)
        return bool(got.get("open")), f"{target}:{port} " + (
            "open" if got.get("open") else f"closed: {got.get('error', '')}"
        )
    try:
        with socket.create_connection((str(target), port), timeout=5):
            return True, f"{target}:{port} open"
    except OSError as e:
        return False, f"{target}:{port} closed: {e}"
