"""Writing files so that a crash leaves either the old content or the new, never half of one;
writing where the user points without being turned against what is already there; and the
private folders the tool keeps its own leftovers and tracebacks in."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

from orchestrator.errors import OrchestrateError, UsageError


@contextlib.contextmanager
def _renamed_over(tmp: str, path: str) -> Iterator[None]:
    """``tmp`` becomes ``path`` when the block succeeds, in one rename (readers see the old
    file or the new one); when the block fails, or is interrupted, it is removed."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it, then rename it over
    (``durable=False``: not flushed to disk first, for what a crash may lose)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    with _renamed_over(tmp, path):
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """:func:`atomic_write` for a file too large to hold in memory, or written by another
    program (a disk image): the block writes it at the name this yields, ``.NAME.partial``
    beside ``path``, and it is renamed over ``path`` when the block succeeds. The name is fixed
    so that a program told it in advance writes there, and a leftover of a killed run is
    overwritten by the next; flushing the file is the writer's part."""
    tmp = partial_name(path)
    with _renamed_over(tmp, path):
        yield tmp


def partial_name(path: str) -> str:
    """Where :func:`atomic_output` has ``path`` written until it is complete, for a program
    that must be told before the block begins."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")


def atomic_move(src: str, path: str, mode: int = 0o600) -> None:
    """Put ``src``, a finished file another program wrote (sops writes its own output), in
    place of ``path`` atomically: flushed and renamed over it when both are on one file system,
    else copied beside ``path`` and renamed from there (``src`` then stays where it is)."""
    with open(src, "rb") as fh:
        folder = os.path.dirname(os.path.abspath(path))
        if os.fstat(fh.fileno()).st_dev != os.stat(folder).st_dev:
            atomic_write(path, fh.read(), mode)
            return
        os.fsync(fh.fileno())
    os.chmod(src, mode)
    os.replace(src, path)


def atomic_json(path: str, data: Any, mode: int = 0o600) -> None:
    """``data`` as indented, key-sorted JSON at ``path``, atomically; its folder is made (0700)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode)


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link that does not resolve (a loop?)"),
)


def file_kind(mode: int) -> str:
    """What an ``st_mode`` describes, in words for a message."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((word for test, word in _KINDS if test(mode)), "not a regular file")


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


def user_file_target(path: str) -> str:
    """The file that writing the user-named ``path`` replaces: ``path`` with every symbolic link
    resolved. It must be a regular file or absent; a folder, device, FIFO or socket is refused
    (UsageError), so a careless ``-o /dev/sda`` or ``-o ~`` is never replaced by a file.

    A dangling symbolic link names the file it points to, which is then created, as a shell's
    ``>`` does: the link is the user's way of saying where the file goes."""
    target = os.path.realpath(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as e:
        raise UsageError(f"{path}: cannot write it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        via = "" if target == os.path.abspath(path) else f" (it resolves to {target})"
        raise UsageError(
            f"{path} is {file_kind(st.st_mode)}{via}; refusing to write over it: "
            "name a regular file"
        )
    return target


def write_user_file(path: str, data: bytes, mode: int = 0o600, folders: bool = False) -> str:
    """Write ``data`` to a file the user named, atomically and through symbolic links: the
    link's final target is replaced and the link kept (a dotfiles symlink stays a symlink).
    Never writes to or over a folder, device, FIFO or socket (see :func:`user_file_target`).
    With ``folders``, missing folders above the target are made (0700). Returns the file
    written."""
    target = user_file_target(path)
    try:
        if folders:
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        atomic_write(target, data, mode)
    except OSError as e:
        raise UsageError(f"{path}: cannot write it ({e.strerror or e})") from None
    return target


def private_folder(path: str) -> None:
    """Make ``path`` a folder only its owner can enter (0700), or check that it is already
    this user's real folder. What the tool keeps there (build trees it later deletes,
    tracebacks) must not land where someone else pointed a symbolic link, so a link, a file
    or another user's folder at ``path`` is refused (UsageError)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"{path} is {file_kind(st.st_mode)}, not a folder; orchestrate keeps private "
            "files there: move it away"
        )
    if st.st_uid != os.getuid():
        raise UsageError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); orchestrate "
            "keeps private files there: move it away"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def new_private_file(folder: str, stem: str, suffix: str, data: bytes) -> str:
    """Write ``data`` to a new file (0600) named ``stem`` + ``suffix`` in ``folder``, or
    ``stem-N`` + ``suffix`` when that name is taken: a name already there, a symbolic link
    included, is never opened, so nothing planted in advance receives the data."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for n in range(100):
        path = os.path.join(folder, f"{stem}-{n}{suffix}" if n else f"{stem}{suffix}")
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return path
    raise FileExistsError(f"{folder}: every name for {stem}{suffix} is taken")


class CorruptState(OrchestrateError):
    """A file orchestrate keeps its state in does not read back as what it wrote."""


def load_state_json(path: str, kind: type = dict, fix: str = "remove it") -> Any:
    """The JSON of a state file the tool wrote, or None when there is none. A file that is not
    JSON of the expected ``kind`` (truncated, edited, replaced) is an error that names it and
    what to do: acting on a guess (say, "never applied, so nothing changed") would mislead."""
    from orchestrator.errors import display_path

    where = display_path(path)
    try:
        raw, _stat = read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptState(f"cannot read {where}: {exc.strerror or exc}; {fix}") from None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptState(f"{where} is corrupt (not valid JSON); {fix}") from None
    if not isinstance(value, kind):
        raise CorruptState(f"{where} is corrupt (not a JSON {_json_kind(kind)}); {fix}")
    return value


def _json_kind(kind: type) -> str:
    return "object" if kind is dict else "array" if kind is list else kind.__name__
