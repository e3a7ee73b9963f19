"""The fixpoint on every core: a large fleet's hosts are evaluated in parts, one part in this
process and the others in forked copies of it, after the shared phase (modules loaded, shapes
built), which the copies inherit instead of redoing.

Values do not depend on the order hosts are evaluated in, so each part evaluates its hosts
(and, lazily, whatever other hosts they read) and the parts' results, joined in host order,
are those of one process. What does depend on the order is the reporting of problems: a part
that meets any problem, evaluation warning or failed assertion gives up, and the caller
evaluates the fleet again in one process, which reports them as it always has.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator import forks
from orchestrator.errors import Loc, Problem
from orchestrator.evaluator.engine import Evaluator, HostEval

MIN_HOSTS = 2000  # below this, forking and joining cost more than a second core saves

# what finishing a host makes: its config, roles and secret declarations (fleet.HostResult)
Finish = Callable[[Evaluator, HostEval, list[Problem], dict[Any, list[str]]], Any]
# a finished host made again from what a child sent: (host, config, roles, secret_decls)
Rebuild = Callable[[HostEval, dict[str, Any], Any, Any], Any]


@dataclass(frozen=True)
class Part:
    """The finished hosts of one part, in host order, and the warnings finishing them gave."""

    results: list[Any]
    warnings: list[Problem]


class GaveUp(Exception):
    """A part met something to report: the fleet is evaluated again in one process."""


def parts_wanted(hosts: int) -> int:
    """How many parts a fleet of ``hosts`` is evaluated in (1: in this process alone)."""
    return 1 if hosts < MIN_HOSTS else forks.cores()


def evaluate_parts(
    ev: Evaluator, parts: int, finish: Finish, rebuild: Rebuild
) -> list[Part] | None:
    """Every host of ``ev`` evaluated and finished in ``parts`` parts (the first here, the
    others in forked copies); None when a part gave up."""
    chunks = forks.split(list(ev.hosts), parts)
    copies = [forks.start(functools.partial(_encoded, ev, c, finish)) for c in chunks[1:]]
    try:
        own: Part | None = evaluate_part(ev, chunks[0], finish)
    except GaveUp:
        own = None
    sent = [forks.answer(c, abandon=own is None) for c in copies]
    if own is None or any(data is None for data in sent):
        return None
    return [own, *(_decoded(ev, data, rebuild) for data in sent if data is not None)]


def evaluate_part(ev: Evaluator, names: list[str], finish: Finish) -> Part:
    """The hosts ``names`` evaluated and finished; GaveUp when anything is to be reported."""
    warnings: list[Problem] = []
    failed: dict[tuple[Loc | None, str], list[str]] = {}
    try:
        for name in names:
            ev.run_host(ev.hosts[name])
        results = [finish(ev, ev.hosts[name], warnings, failed) for name in names]
    except RecursionError:
        raise GaveUp from None
    if ev.problems or ev.warnings or failed or ev.too_deep is not None:
        raise GaveUp
    return Part(results, warnings)


def _encoded(ev: Evaluator, names: list[str], finish: Finish) -> bytes:
    """In a copy: its part, as bytes."""
    return _encode(evaluate_part(ev, names, finish))


def _encode(part: Part) -> bytes:
    """A part as bytes: each config as JSON (orjson reads it back much faster than pickle),
    the rest pickled."""
    rows = [(r, orjson.dumps(r.config)) for r in part.results]
    return pickle.dumps(
        ([(r.name, cfg, r.roles, r.secret_decls) for r, cfg in rows], part.warnings),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def _decoded(ev: Evaluator, data: bytes, rebuild: Rebuild) -> Part:
    rows, warnings = pickle.loads(data)
    results = [
        rebuild(ev.hosts[n], orjson.loads(cfg), roles, decls) for n, cfg, roles, decls in rows
    ]
    return Part(results, warnings)
