"""The stages composed: load and evaluate a fleet, compile it, and keep its build fresh. The
entry points in api.py and the executor's plan and apply start from here."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.compiler.freshness import is_fresh, load_build_data
from orchestrator.paths import state_dir

if TYPE_CHECKING:  # the heavy stages load only when a command needs them
    from orchestrator.compiler.build import BuildResult
    from orchestrator.errors import Problem
    from orchestrator.evaluator.fleet import Evaluation, HostResult


def default_out(root: str) -> str:
    return os.path.join(state_dir(root), "build")


def evaluate_fleet(root: str, keep_going: bool = False) -> Evaluation:
    """Load and evaluate the fleet in ``root`` (raises FleetErrors; with ``keep_going`` only
    when fleet.yaml itself is in error, and the evaluation carries its problems)."""
    from orchestrator.evaluator.fleet import evaluate
    from orchestrator.loader.fleet import load_fleet

    return evaluate(load_fleet(root), keep_going)


def build(root: str, out: str | None = None) -> tuple[Evaluation, BuildResult]:
    """A full compile (what plan and apply start from: they read the whole evaluation); it
    keeps what the next compile needs to be incremental."""
    # Evaluation allocates millions of small objects and frees few: the cyclic collector's
    # repeated passes over them would cost a fifth of a large fleet's compile.
    from orchestrator.compiler.build import write_build
    from orchestrator.compiler.incremental import remember
    from orchestrator.secrets.store import delivery_plan

    started = time.time_ns()
    with _no_collector():
        ev = evaluate_fleet(root)
        # the secrets feature works out what the build delivers; the compiler renders that value
        secrets = delivery_plan(ev)
        result = write_build(ev, out or default_out(root), secrets)
        remember(ev, result, secrets is None, started)
        return ev, result


def compile_build(
    root: str, out: str | None = None, full: bool = False
) -> tuple[list[Problem], BuildResult]:
    """`orchestrate compile`: incremental when the last compile's cache allows it (see
    compiler/incremental.py), else (or with ``full``) a full one; its warnings and result."""
    from orchestrator.compiler.incremental import recompile

    target = out or default_out(root)
    if not full:
        with _no_collector():
            done = recompile(root, target, _no_secrets(root))
        if done is not None:
            return [], done
    ev, result = build(root, target)
    return ev.warnings, result


def _no_secrets(root: str) -> Callable[[list[HostResult]], bool]:
    """Whether hosts with these results get no secrets (and the fleet has none)."""
    from orchestrator.secrets.store import nothing_to_deliver

    return lambda results: nothing_to_deliver(root, results)


@contextlib.contextmanager
def _no_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # what the compile allocated is moved out of the collector's sight first: switched
            # back on, its next pass would walk all of it (0.6 s at 10,000 hosts) to free next
            # to nothing; it stays for the life of the command, which reads it or exits
            gc.freeze()
            gc.enable()


def fresh_build(root: str, out: str | None = None) -> str:
    """The build folder, compiled first when any input changed since it was written."""
    target = out or default_out(root)
    if not is_fresh(target, root):
        compile_build(root, target)
    return target


def fleet_data(root: str, out: str | None = None) -> dict[str, Any]:
    """{fleet, hosts, groups, images} of a fresh build."""
    return load_build_data(fresh_build(root, out))
