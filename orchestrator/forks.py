"""Work in forked copies of this process, for the stages that split a large fleet over the
machine's cores: a copy inherits everything computed so far instead of redoing it, does its
share, and sends back bytes. Whatever goes wrong in a copy, the caller gets None and does the
share itself, so a copy never reports anything on its own."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
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
    """A forked copy at work, and the end of the pipe its messages come back on."""

    process: Any
    reader: Any


class CopyFailed(Exception):
    """The copy's work failed, or the copy died: the caller does that work itself."""


# every message starts with one of these: data follows, the work ended, or it failed
_DATA, _END, _FAILED = b"D", b"E", b"F"


def start(work: Callable[[], Iterable[bytes]]) -> Copy:
    """``work()`` in a forked copy of this process: each piece it yields is sent as it comes,
    so that the caller can use the first while the copy makes the next."""
    for stream in (sys.stdout, sys.stderr):  # a copy flushes what it inherited on its way out
        stream.flush()
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run, args=(work, writer), daemon=True)
    process.start()
    writer.close()
    return Copy(process, reader)


def _run(work: Callable[[], Iterable[bytes]], writer: Any) -> None:
    try:
        for piece in work():
            writer.send_bytes(_DATA + piece)
        end = _END
    except BaseException:  # whatever it was, the caller does the work again and reports it
        end = _FAILED
    with contextlib.suppress(OSError):  # the caller stopped listening: it needs no more
        writer.send_bytes(end)
    writer.close()


def take(copy: Copy, wait: bool = False) -> tuple[list[bytes], bool]:
    """The pieces the copy has sent so far (with ``wait``, at least one, or its end), and
    whether its work has ended; CopyFailed when it failed or died."""
    pieces: list[bytes] = []
    while wait or copy.reader.poll(0):
        try:
            message = copy.reader.recv_bytes()
        except (EOFError, OSError):
            raise CopyFailed from None
        if message[:1] == _END:
            return pieces, True
        if message[:1] != _DATA:
            raise CopyFailed
        pieces.append(message[1:])
        wait = False
    return pieces, False


def every_piece(copy: Copy) -> list[bytes] | None:
    """All the pieces of the copy's work, once it ended; None when it failed or died."""
    found: list[bytes] = []
    try:
        ended = False
        while not ended:
            pieces, ended = take(copy, wait=True)
            found += pieces
    except CopyFailed:
        return None
    finally:
        stop(copy)
    return found


def stop(copy: Copy) -> None:
    """End the copy (done, or no longer needed) and reap it."""
    if copy.process.is_alive():
        copy.process.kill()
    copy.reader.close()
    copy.process.join()
