"""The stages composed: load and evaluate a fleet, compile it, and keep its build fresh. The
entry points in api.py and the executor's plan and apply start from here."""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

from orchestrator.compiler.freshness import is_fresh, load_build_data
from orchestrator.paths import state_dir

if TYPE_CHECKING:  # the heavy stages load only when a command needs them
    from orchestrator.compiler.build import BuildResult
    from orchestrator.evaluator.fleet import Evaluation


def default_out(root: str) -> str:
    return os.path.join(state_dir(root), "build")


def evaluate_fleet(root: str, keep_going: bool = False) -> Evaluation:
    """Load and evaluate the fleet in ``root`` (raises FleetErrors; with ``keep_going`` only
    when fleet.yaml itself is in error, and the evaluation carries its problems)."""
    from orchestrator.evaluator.fleet import evaluate
    from orchestrator.loader.fleet import load_fleet

    return evaluate(load_fleet(root), keep_going)


def build(root: str, out: str | None = None) -> tuple[Evaluation, BuildResult]:
    """`orchestrate compile`."""
    # Evaluation allocates millions of small objects and frees few: the cyclic collector's
    # repeated passes over them would cost a fifth of a large fleet's compile.
    from orchestrator.compiler.build import write_build
    from orchestrator.secrets.store import delivery_plan

    enabled = gc.isenabled()
    gc.disable()
    try:
        ev = evaluate_fleet(root)
        # the secrets feature works out what the build delivers; the compiler renders that value
        return ev, write_build(ev, out or default_out(root), delivery_plan(ev))
    finally:
        if enabled:
            gc.enable()


def fresh_build(root: str, out: str | None = None) -> str:
    """The build folder, compiled first when any input changed since it was written."""
    target = out or default_out(root)
    if not is_fresh(target, root):
        build(root, target)
    return target


def fleet_data(root: str, out: str | None = None) -> dict[str, Any]:
    """{fleet, hosts, groups, images} of a fresh build."""
    return load_build_data(fresh_build(root, out))
