"""Room for deep evaluation: a chain of cross-host references is followed recursively, a few
dozen Python frames per step, so ten thousand steps need far more than the main thread's
stack and Python's default recursion limit of 1,000."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

STACK_BYTES = 1 << 30  # reserved address space; only the pages a deep chain touches are used
RECURSION_LIMIT = 400_000  # frames; well inside STACK_BYTES at the C stack each frame may use


class TooDeep(Exception):
    """Evaluation went deeper than RECURSION_LIMIT frames."""


def run_deep(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread with a large stack; its result, or its exception re-raised.
    A RecursionError (deeper still) becomes TooDeep, which callers report as a problem."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except RecursionError:
            outcome["error"] = TooDeep()
        except BaseException as exc:  # handed to the calling thread as it is
            outcome["error"] = exc

    previous_limit = sys.getrecursionlimit()
    previous_stack = threading.stack_size(STACK_BYTES)
    try:
        sys.setrecursionlimit(max(previous_limit, RECURSION_LIMIT))
        worker = threading.Thread(target=target, name="orchestrate-evaluate", daemon=True)
        worker.start()
    finally:
        threading.stack_size(previous_stack)
    try:
        worker.join()
    finally:
        sys.setrecursionlimit(previous_limit)
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value
