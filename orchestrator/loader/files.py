"""Reading the fleet's files safely: only regular files, of bounded size, and only from the
folders a fleet may name (nothing heavy imported, so that fast commands stay fast).

A module path, a role file or a `lib` folder is fleet input like any value: `imports:
[/home/me/.ssh/id_ed25519]` or a role file linked to /dev/zero must be refused before anything
is read, not read and then complained about.
"""

from __future__ import annotations

import os
import stat

from orchestrator.fsutil import file_kind

MAX_FILE_BYTES = 64 << 20  # a fleet file (fleet.yaml, a module, a lib file)
MAX_ROLE_FILE_BYTES = 16 << 20  # one file of a role copied into the build


class UnreadableFile(OSError):
    """Not a regular file, too large, or unreadable: the message says which."""


def read_regular(path: str, limit: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file (symlinks followed), refusing FIFOs, devices, sockets and
    folders without blocking on them, and files larger than ``limit``."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise UnreadableFile(f"{path} is a folder, not a file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(
                f"not a regular file ({file_kind(st.st_mode)}); refusing to read it"
            )
        if st.st_size > limit:
            raise UnreadableFile(f"larger than {limit:,} bytes; refusing to read it")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise UnreadableFile(f"larger than {limit:,} bytes; refusing to read it")
        return data, st
    finally:
        os.close(fd)


def inside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` lies in one of ``roots``, both as written and once every symlink on
    the way is resolved (a link inside the fleet that points out of it is outside)."""
    written = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path)
    return any(_below(written, r) for r in roots) and any(
        _below(real, os.path.realpath(r)) for r in roots
    )


def _below(path: str, root: str) -> bool:
    root = os.path.normpath(os.path.abspath(root))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
