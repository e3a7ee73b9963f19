"""The fixpoint on every core: a large fleet's hosts are evaluated and finished by forked copies
of this process, which inherit the shared phase (modules loaded, shapes built) instead of
redoing it, and by this process at once: each copy works through its share of the hosts from
the front and sends them in batches, while this process takes hosts from the back of the
shares, until the two meet. However busy the machine's cores are, no one waits for another.

Values do not depend on the order hosts are evaluated in, so each process evaluates its hosts
(and, lazily, whatever other hosts they read) and their results, joined in host order, are
those of one process. What does depend on the order is the reporting of problems: a process
that meets any problem, evaluation warning or failed assertion gives up, and the caller
evaluates the fleet again in one process, which reports them as it always has.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from orchestrator import forks
from orchestrator.errors import Loc, Problem
from orchestrator.evaluator.engine import Evaluator, HostEval

MIN_HOSTS = 500  # below this, forking and joining cost more than a second core saves
BATCH = 100  # hosts a copy sends at a time

# finishing a host: its config, roles and secret declarations (fleet.HostResult)
Finish = Callable[[Evaluator, HostEval, list[Problem], dict[Any, list[str]]], Any]
# a finished host made again from what a copy sent: (host, config, roles, secret_decls, reads,
# health checks)
Rebuild = Callable[[HostEval, dict[str, Any], Any, Any, Any, Any], Any]
Failed = dict[tuple[Loc | None, str], list[str]]


@dataclass(frozen=True)
class Done:
    """One finished host, and the warnings finishing it gave."""

    result: Any
    warnings: list[Problem]


class GaveUp(Exception):
    """Something is to be reported: the fleet is evaluated again in one process."""


@dataclass
class _Share:
    """The hosts one copy was given: the copy has sent those before ``low``, this process
    finished those from ``high`` on."""

    copy: forks.Copy
    names: list[str]
    low: int = 0
    high: int = 0
    ended: bool = False
    done: list[Done | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.high = len(self.names)
        self.done = [None] * len(self.names)


def parts_wanted(hosts: int) -> int:
    """How many processes a fleet of ``hosts`` is evaluated by (1: this one alone)."""
    return 1 if hosts < MIN_HOSTS else forks.cores()


def evaluate_parts(
    ev: Evaluator, parts: int, finish: Finish, rebuild: Rebuild
) -> list[Done] | None:
    """Every host of ``ev`` evaluated and finished, in host order, by ``parts`` processes
    (``parts - 1`` forked copies and this one); None when one of them gave up."""
    chunks = forks.split(list(ev.hosts), parts - 1)
    shares = [_Share(forks.start(functools.partial(_batches, ev, c, finish)), c) for c in chunks]
    failed: Failed = {}
    try:
        while True:
            for share in shares:
                _receive(ev, share, rebuild)
            share = max(shares, key=lambda s: s.high - s.low)
            if share.low >= share.high:
                break
            share.high -= 1
            share.done[share.high] = finish_one(ev, share.names[share.high], finish, failed)
    except (GaveUp, forks.CopyFailed):
        return None
    finally:
        for share in shares:
            forks.stop(share.copy)
    return [d for share in shares for d in share.done if d is not None]


def finish_one(ev: Evaluator, name: str, finish: Finish, failed: Failed) -> Done:
    """One host evaluated and finished (finishing computes every option of it); GaveUp when
    anything is to be reported."""
    warnings: list[Problem] = []
    try:
        result = finish(ev, ev.hosts[name], warnings, failed)
    except RecursionError:
        raise GaveUp from None
    if ev.problems or ev.warnings or failed or ev.too_deep is not None:
        raise GaveUp
    return Done(result, warnings)


def _batches(ev: Evaluator, names: list[str], finish: Finish) -> Iterator[bytes]:
    """In a copy: its hosts, finished from the front, as batches of bytes."""
    failed: Failed = {}
    for start in range(0, len(names), BATCH):
        batch = [finish_one(ev, n, finish, failed) for n in names[start : start + BATCH]]
        yield _encode(start, batch)


def _encode(start: int, batch: list[Done]) -> bytes:
    """A batch as bytes: each config as JSON (orjson reads it back much faster than pickle),
    the rest pickled."""
    rows = [
        (
            d.result.name,
            orjson.dumps(d.result.config),
            d.result.roles,
            d.result.secret_decls,
            d.result.reads,
            d.result.checks,
        )
        for d in batch
    ]
    warnings = [d.warnings for d in batch]
    return pickle.dumps((start, rows, warnings), protocol=pickle.HIGHEST_PROTOCOL)


def _receive(ev: Evaluator, share: _Share, rebuild: Rebuild) -> None:
    """What the share's copy has sent since last time, kept where this process has not
    finished those hosts itself."""
    if share.ended:
        return
    pieces, share.ended = forks.take(share.copy)
    for data in pieces:
        start, rows, warnings = pickle.loads(data)
        for i, ((name, cfg, roles, decls, reads, checks), found) in enumerate(
            zip(rows, warnings, strict=True)
        ):
            if start + i < share.high:
                result = rebuild(ev.hosts[name], orjson.loads(cfg), roles, decls, reads, checks)
                share.done[start + i] = Done(result, found)
        share.low = max(share.low, start + len(rows))
