"""Work in forked copies of this process, for the stages that split a large fleet over the
machine's cores: a copy inherits everything computed so far instead of redoing it, does its
share, and sends back bytes. Whatever goes wrong in a copy, the caller gets None and does the
share itself, so a copy never reports anything on its own."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

MAX_COPIES = 4
T = TypeVar("T")


def cores() -> int:
    """How many cores this process may run on (at most MAX_COPIES); 1 where it cannot fork."""
    if not hasattr(os, "fork"):
        return 1
    try:
        found = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        found = os.cpu_count() or 1
    return max(1, min(found, MAX_COPIES))


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` in ``parts`` consecutive runs of nearly equal length."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


@dataclass(frozen=True)
class Copy:
    """A forked copy at work, and the end of the pipe its answer comes back on."""

    process: Any
    reader: Any


def start(work: Callable[[], bytes]) -> Copy:
    """``work()`` in a forked copy of this process."""
    for stream in (sys.stdout, sys.stderr):  # a copy flushes what it inherited on its way out
        stream.flush()
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run, args=(work, writer), daemon=True)
    process.start()
    writer.close()
    return Copy(process, reader)


def _run(work: Callable[[], bytes], writer: Any) -> None:
    try:
        data = work()
    except BaseException:  # whatever it was, the caller does the work again and reports it
        data = b""
    writer.send_bytes(data)
    writer.close()


def answer(copy: Copy, abandon: bool = False) -> bytes | None:
    """What the copy's work returned; None when it failed, sent nothing or died (or when
    ``abandon``: it is stopped unread)."""
    data = b""
    if abandon:
        copy.process.kill()
    else:
        with contextlib.suppress(EOFError, OSError):  # it died before sending
            data = copy.reader.recv_bytes()
    copy.reader.close()
    copy.process.join()
    return data or None
