"""sha256 of input files, remembered from when they were read (standard library only)."""

from __future__ import annotations

import hashlib
import os
from stat import S_ISREG

_DIGESTS: dict[str, tuple[int, int, str]] = {}


def remember_digest(path: str, stat: os.stat_result, digest: str) -> None:
    _DIGESTS[path] = (stat.st_mtime_ns, stat.st_size, digest)


def remembered(paths: list[str]) -> dict[str, tuple[int, int, str]]:
    """What is remembered of ``paths`` (for a forked copy to hand to its parent)."""
    return {p: _DIGESTS[p] for p in paths if p in _DIGESTS}


def remember_all(found: dict[str, tuple[int, int, str]]) -> None:
    """Take over what :func:`remembered` returned in another process."""
    _DIGESTS.update(found)


def file_digest(path: str) -> str:
    """sha256 of a file; reuses the hash taken when it was loaded if it has not changed since."""
    stat = os.stat(path)
    known = _DIGESTS.get(path)
    if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
        return known[2]
    h = hashlib.sha256()
    # O_NONBLOCK and the type check: an input replaced by a FIFO must not hang a freshness check
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
