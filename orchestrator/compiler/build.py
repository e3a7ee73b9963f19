"""Write the build: inventory, generated roles, site playbook, ansible.cfg, query data and a
manifest of input and output hashes. Files are produced in memory, written to a temporary
folder in the tool's own folder beside the target and swapped in only when everything
succeeded; output is byte-identical for identical inputs (sorted keys, no timestamps, no
absolute paths). Only an empty folder or an earlier build is ever replaced."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator import __version__
from orchestrator.compiler.content import Spans, render_build
from orchestrator.compiler.delivery import SecretsDelivery
from orchestrator.compiler.freshness import (
    MANIFEST,
    input_name,
    prune_stamps,
    sha256_file,
    stamp_bytes,
    stamp_path,
    tool_digest,
)
from orchestrator.errors import UsageError
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.fsutil import atomic_write, file_kind, private_folder
from orchestrator.naming import GENERATIONS_ROLE, SECRETS_ROLE
from orchestrator.paths import shipped_roles_dir, state_dir

# Every build holds this file: only a folder that has it (or an earlier build's manifest) is
# ever replaced. Its content is fixed, so builds stay byte-identical.
BUILD_MARKER = ".orchestrate-build"
MARKER_TEXT = (
    b"orchestrate build, marker format 1\n"
    b"This folder is written by `orchestrate compile`, which replaces all of it on the next\n"
    b"compile: keep nothing of your own here.\n"
)
MARKER_LINE = re.compile(rb"orchestrate build, marker format [0-9]+\Z")
MAX_LEGACY_MANIFEST = 64 << 20
# In-progress and replaced builds live only in this folder of the fleet's .orchestrate/ (or,
# for a build on another file system, beside the build: rename needs one file system);
# nothing outside it is ever swept.
TOOL_DIR = ".orchestrate-tmp"
AT_FDCWD = -100
RENAME_EXCHANGE = 2
SWAP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass(frozen=True)
class BuildResult:
    out_dir: str
    files: int
    hosts: int
    roles: int
    # what an incremental compile starts from (compiler/incremental.py): the host entries'
    # places in fleet.json and inventory.json, the input files, the manifest's sha256
    spans: Spans | None = None
    inputs: tuple[str, ...] = ()
    manifest_sha: str = ""
    # the hosts an incremental compile evaluated again (None: a full compile, every host)
    evaluated: tuple[str, ...] | None = None


def input_files(ev: Evaluation) -> list[str]:
    from orchestrator.compiler.content import existing_roles

    files = {ev.spec.file, *ev.modules}
    for folder in existing_roles(ev).values():
        for base, _dirs, names in os.walk(folder):
            files.update(os.path.join(base, n) for n in names)
    secrets = os.path.join(ev.spec.root, "secrets")
    if os.path.isdir(secrets):
        for base, dirs, names in os.walk(secrets):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files.update(os.path.join(base, n) for n in names if not n.startswith("."))
        files.update(_tree(os.path.join(shipped_roles_dir(), SECRETS_ROLE)))
    files.update(_tree(os.path.join(shipped_roles_dir(), GENERATIONS_ROLE)))
    for folder in ev.spec.lib_dirs:
        if os.path.isdir(folder):
            files.update(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))
    return sorted(files)


def _tree(folder: str) -> list[str]:
    """Every file of a shipped role's folder (its compiled Python aside)."""
    out: list[str] = []
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out.extend(os.path.join(base, n) for n in names)
    return out


def input_hashes(ev: Evaluation, files: list[str] | None = None) -> dict[str, str]:
    """sha256 of every input; ``files`` when the caller has :func:`input_files` already (it
    walks the roles and reads their task files for the roles they use)."""
    listed = input_files(ev) if files is None else files
    return {input_name(p, ev.spec.root): sha256_file(p) for p in listed}


def write_build(ev: Evaluation, out_dir: str, secrets: SecretsDelivery | None) -> BuildResult:
    """Render everything, with the secrets ``secrets`` delivers (None: the fleet has none),
    then write it to ``out_dir`` atomically."""
    outputs, spans = render_build(ev, secrets)
    outputs[BUILD_MARKER] = MARKER_TEXT
    inputs = input_files(ev)  # once: the manifest hashes them, the stamp records their stat()
    manifest = {
        "tool": "orchestrate",
        "version": __version__,
        "tool_digest": tool_digest(),
        "fleet": ev.spec.name,
        "inputs": input_hashes(ev, inputs),
        "outputs": {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(outputs.items())
        },
    }
    outputs[MANIFEST] = manifest_bytes(manifest)
    manifest_sha = hashlib.sha256(outputs[MANIFEST]).hexdigest()
    target = _write_atomically(outputs, out_dir, ev.spec.root)
    write_stamp(target, ev.spec.root, inputs, ev.spec.lib_dirs, manifest_sha)
    # the roles of the fleet's modules (the generations plumbing, in every build, is not one)
    roles = {n.split("/")[1] for n in outputs if n.startswith("roles/")} - {GENERATIONS_ROLE}
    return BuildResult(
        out_dir, len(outputs), len(ev.hosts), len(roles), spans, tuple(inputs), manifest_sha
    )


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_stamp(
    target: str,
    root: str,
    inputs: list[str],
    lib_dirs: tuple[str, ...],
    manifest_sha: str,
    known: dict[str, list[int]] | None = None,
) -> None:
    """The build's freshness stamp, written after the swap (which may change the mtime of a
    folder the stamp records); ``known``: inputs' [mtime_ns, size] as the compile saw them."""
    # folders whose new files would be inputs: secrets/ and the lib folders
    folders = [os.path.join(root, "secrets"), *lib_dirs]
    stamp = stamp_bytes(target, root, inputs, folders, manifest_sha, known)
    where = stamp_path(target, root)
    try:
        os.makedirs(os.path.dirname(where), exist_ok=True)
        atomic_write(where, stamp, 0o644, durable=False)  # lost in a crash: checked by content
        prune_stamps(where)
    except OSError:
        pass  # a read-only fleet folder: freshness is then checked by content, more slowly


@dataclass(frozen=True)
class Spliced:
    """A file of the build made of ranges (start, end) of a file of the earlier build (open
    as ``source``) and of new bytes, in order: only the new bytes are written from here."""

    source: int
    pieces: tuple[tuple[int, int] | bytes, ...]


def write_patched(
    changed: dict[str, bytes | Spliced], out_dir: str, root: str, earlier: int, names: set[str]
) -> str:
    """A build made of the earlier one (its folder open as ``earlier``, the build at
    ``out_dir`` when it was opened) with the files ``changed`` replaced, swapped in at
    ``out_dir`` as a whole like any other: every other file is a hard link to the earlier
    build's (which nothing ever writes into), so only what changed is written. ``names``:
    every file the new build has; an OSError when the earlier build does not have the rest
    (another compile replaced it meanwhile and its files are being removed). Returns the
    target."""
    target = _replaceable_target(out_dir)
    if not _is_build(target):
        raise UsageError(f"{out_dir} is not a build to start from")
    bad = _unsafe_names(changed)
    if bad:
        raise UnsafeOutputs(bad)
    for i, work in enumerate(work_dirs(target, root)):
        private_folder(work)
        try:
            with _claimed(work) as tmp:
                linked = _link_tree(earlier, tmp, set(changed))
                if linked | set(changed) != names or len(linked) + len(changed) != len(names):
                    raise OSError(errno.ENOENT, "the earlier build changed meanwhile", out_dir)
                _write_tree(tmp, changed)
                os.chmod(tmp, 0o755)
                _swap_in(tmp, target, work)
            return target
        except OSError as e:
            if e.errno != errno.EXDEV or i == len(work_dirs(target, root)) - 1:
                raise
        finally:
            _sweep(work)
    raise AssertionError("unreachable: the last working folder raises")


def tidy(out_dir: str, root: str) -> None:
    """Sweep the working folders of ``out_dir``'s builds as a compile does when it writes one
    (for a compile that found nothing to write)."""
    target = os.path.realpath(out_dir)
    for work in work_dirs(target, root):
        if os.path.isdir(work):
            _sweep(work)


def _link_tree(earlier: int, tmp: str, skip: set[str]) -> set[str]:
    """Hard links in ``tmp`` to every file of the build open as ``earlier`` but those in
    ``skip`` (names relative to the build). A build holds only folders and regular files;
    folders are opened once each, and links made relative to them (ten thousand host
    files). Returns the names linked."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    linked: set[str] = set()
    dst = os.open(tmp, flags)
    try:
        src = os.open(".", flags, dir_fd=earlier)  # its own place in the folder's listing
        try:
            _link_folder(src, dst, "", skip, linked)
        finally:
            os.close(src)
    finally:
        os.close(dst)
    return linked


def _link_folder(src: int, dst: int, prefix: str, skip: set[str], linked: set[str]) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.scandir(src) as entries:
        found = list(entries)
    for entry in found:
        name = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(entry.name, dir_fd=dst)
            inner, outer = os.open(entry.name, flags, dir_fd=src), -1
            try:
                outer = os.open(entry.name, flags, dir_fd=dst)
                _link_folder(inner, outer, name + "/", skip, linked)
            finally:
                os.close(inner)
                if outer >= 0:
                    os.close(outer)
        elif name not in skip:
            os.link(entry.name, entry.name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            linked.add(name)


class UnsafeOutputs(UsageError):
    """Output names that would write outside the build folder. Host, role and template names
    from the fleet make these names; the loader refuses bad ones with their file:line:col, so
    this is the writer's last line of defence."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "the build would write outside its folder: "
            + "; ".join(problems)
            + " (a host, role or template name in the fleet makes these names); nothing was written"
        )


def _write_atomically(outputs: dict[str, bytes], out_dir: str, root: str) -> str:
    """Write ``outputs`` into a fresh folder of the tool's working folder, then swap it in at
    ``out_dir`` (returned with links resolved). Everything that can be refused is refused
    before anything is written."""
    target = _replaceable_target(out_dir)
    bad = _unsafe_names(outputs)
    if bad:
        raise UnsafeOutputs(bad)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    candidates = work_dirs(target, root)
    for i, work in enumerate(candidates):
        private_folder(work)
        try:
            with _claimed(work) as tmp:
                _write_tree(tmp, outputs)
                os.chmod(tmp, 0o755)
                _swap_in(tmp, target, work)
            return target
        except OSError as e:
            # a bind mount shares the device number but not the mount: renames still cross
            if e.errno != errno.EXDEV or i == len(candidates) - 1:
                raise
        finally:
            _sweep(work)  # the build just replaced, and whatever a killed compile left
    raise AssertionError("unreachable: the last working folder raises")


def work_dirs(target: str, root: str) -> list[str]:
    """Where a build for ``target`` is written before it is swapped in: the fleet's own
    ``.orchestrate/.orchestrate-tmp`` when it is on the file system of ``target`` (so nothing
    is written beside an `--out` folder), else (or when the fleet folder is read-only) the same
    name beside ``target``: a folder cannot be renamed across file systems."""
    parent = os.path.dirname(target)
    beside = os.path.join(parent, TOOL_DIR)
    own = state_dir(os.path.realpath(root))
    try:
        os.makedirs(own, exist_ok=True)
        same = os.stat(own).st_dev == os.stat(parent).st_dev and os.access(own, os.W_OK)
    except OSError:
        same = False
    mine = os.path.join(own, TOOL_DIR)
    return [mine] if mine == beside else [mine, beside] if same else [beside]


def _replaceable_target(out_dir: str) -> str:
    """The folder the build replaces: ``out_dir`` with symbolic links resolved (a link to the
    build stays a link). It may be absent, empty or an earlier build; anything else is the
    user's and is refused, naming what is there."""
    target = os.path.realpath(out_dir)
    if TOOL_DIR in target.split(os.sep):
        raise UsageError(f"{out_dir} is inside orchestrate's working folder {TOOL_DIR}")
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"{out_dir} is {file_kind(st.st_mode)}, not a build folder; refusing to replace it "
            "(give --out a new or empty folder)"
        )
    entries = sorted(os.listdir(target))
    if entries and not _is_build(target):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UsageError(
            f"{out_dir} holds {len(entries)} entries ({shown}) and is not an orchestrate build "
            f"(it has no {BUILD_MARKER}); refusing to replace it: give --out a new or empty "
            "folder, or remove this one yourself"
        )
    return target


def _is_build(folder: str) -> bool:
    """Whether ``folder`` carries the build marker, or is a build from before the marker: its
    manifest.json is a JSON object that says ``"tool": "orchestrate"``."""
    head = _read_small(os.path.join(folder, BUILD_MARKER), 4096)
    if head is not None and MARKER_LINE.match(head.split(b"\n", 1)[0]):
        return True
    raw = _read_small(os.path.join(folder, MANIFEST), MAX_LEGACY_MANIFEST)
    if raw is None:
        return False
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("tool") == "orchestrate"


def _read_small(path: str, limit: int) -> bytes | None:
    """A regular file's content when it has at most ``limit`` bytes, else None. What is read
    here is not yet known to be ours: a FIFO must not hang the compile, a huge file must not
    fill the memory, a symbolic link is not followed."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
        return b"".join(chunks)
    finally:
        os.close(fd)


def _unsafe_names(outputs: dict[str, bytes] | dict[str, bytes | Spliced]) -> list[str]:
    """Every output name that is not a plain relative path below the build, with the reason."""
    problems = [f"{name!r} ({why})" for name in sorted(outputs) if (why := _why_unsafe(name))]
    folders = {name.rsplit("/", 1)[0] for name in outputs if "/" in name}
    folders |= {f.rsplit("/", i)[0] for f in folders for i in range(1, f.count("/") + 1)}
    problems += [
        f"{name!r} (both a file and the folder of other outputs)"
        for name in sorted(folders & set(outputs))
    ]
    return problems


def _why_unsafe(name: str) -> str | None:
    if not name:
        return "empty"
    if "\0" in name:
        return "a NUL byte"
    if name.startswith("/"):
        return "absolute"
    parts = name.split("/")
    if "" in parts:
        return "an empty segment"
    if ".." in parts:
        return "a '..' segment"
    if "." in parts:
        return "a '.' segment"
    return None


def _write_tree(tmp: str, outputs: dict[str, bytes] | dict[str, bytes | Spliced]) -> None:
    """Write every output below ``tmp``. Each folder's resolved path is checked to lie inside
    ``tmp`` and files are created new without following a link, so no name the checks above
    missed can reach outside."""
    root = os.path.realpath(tmp) + os.sep
    checked: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for name in sorted(outputs):
        path = os.path.join(tmp, name)
        folder = os.path.dirname(path)
        if folder not in checked:
            os.makedirs(folder, exist_ok=True)
            if not (os.path.realpath(folder) + os.sep).startswith(root):
                raise UnsafeOutputs([f"{name!r} (its folder resolves outside the build)"])
            checked.add(folder)
        data = outputs[name]
        with os.fdopen(os.open(path, flags, 0o666), "wb") as fh:
            if isinstance(data, Spliced):
                _write_pieces(fh.fileno(), data)
            else:
                fh.write(data)


def _write_pieces(fd: int, spliced: Spliced) -> None:
    """The pieces of ``spliced`` into ``fd``: its ranges copied by the kernel from the earlier
    file (where the file system cannot, read and written here), its bytes written."""
    for piece in spliced.pieces:
        if isinstance(piece, bytes):
            _write_all(fd, piece)
        else:
            _copy_range(spliced.source, fd, *piece)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(source: int, fd: int, start: int, end: int) -> None:
    while start < end:
        try:
            done = os.copy_file_range(source, fd, end - start, start)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            done = 0
        if done == 0:  # not here, or the file ended early: the plain way
            data = os.pread(source, min(end - start, 1 << 24), start)
            if not data:
                raise OSError(errno.EIO, f"{start} bytes short", f"fd {source}")
            _write_all(fd, data)
            done = len(data)
        start += done


@contextlib.contextmanager
def _claimed(work: str) -> Iterator[str]:
    """A new folder in the tool folder, locked while this compile uses it: a concurrent
    compile's sweep skips it, and the kernel drops the lock when this process dies, which is
    how a sweep knows a folder is a leftover. The lock sits on the folder itself, so once the
    swap has moved it to the target, the name left in the tool folder (the replaced build) is
    unlocked and swept."""
    with _tool_lock(work):
        tmp = tempfile.mkdtemp(prefix="build-", dir=work)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield tmp
    finally:
        os.close(fd)  # what is left at tmp (a half-written tree, a replaced build) is swept


@contextlib.contextmanager
def _tool_lock(work: str) -> Iterator[None]:
    """Held for the moments a compile claims a folder or a sweep picks leftovers, so that a
    sweep never takes a folder between its creation and its lock."""
    fd = os.open(os.path.join(work, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _swap_in(new: str, target: str, work: str) -> None:
    """Put the tree ``new`` at ``target``; an earlier build there ends up in the tool folder.
    The two are exchanged in one step, so no signal and no crash leaves the fleet without a
    build; where the file system cannot exchange, see :func:`_rename_pair`."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    try:
        _exchange(new, target)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        _rename_pair(new, target, os.path.join(work, f"old-{secrets.token_hex(8)}"))


@functools.cache
def _renameat2() -> Any:
    """glibc's renameat2, or None where the C library has none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: str, b: str) -> None:
    """Swap the names ``a`` and ``b`` atomically (Linux renameat2 with RENAME_EXCHANGE)."""
    fn = _renameat2()
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", a)
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), a, None, b)


def _rename_pair(new: str, target: str, aside: str) -> None:
    """Move the old build out to ``aside`` and the new one in, with the signals a user or a
    service manager sends (SIGINT, SIGTERM, SIGHUP) held until both are done. If an interrupt
    still arrives between the two (it reached another thread), the new build goes in before the
    exception travels on; if the second rename fails, the old build is put back."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SWAP_SIGNALS)
    try:
        try:
            os.rename(target, aside)
        finally:
            if not os.path.lexists(target):
                try:
                    os.rename(new, target)
                except OSError:
                    os.rename(aside, target)
                    raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _sweep(work: str) -> None:
    """Remove what is in the tool folder and not in use: replaced builds and what a killed
    compile left. A folder a live compile is writing is locked by it and skipped; only names
    this module makes are touched, never anything outside the tool folder."""
    stale: list[str] = []
    locks: list[int] = []
    with _tool_lock(work):
        for name in sorted(os.listdir(work)):
            if not name.startswith(("build-", "old-")):
                continue
            path = os.path.join(work, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            stale.append(path)
            locks.append(fd)
    if stale:
        _remove_later(stale, locks)


def _remove_later(paths: list[str], locks: list[int]) -> None:
    """Delete ``paths`` in the background: on a large fleet a replaced build is thousands of
    unlinks the user need not wait for. The deleting process inherits the locks, so no other
    sweep starts on the same folders; if it is killed, the next sweep finishes the job."""
    try:
        subprocess.Popen(
            ["rm", "-rf", "--", *paths],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=locks,
        )
    finally:
        for fd in locks:
            os.close(fd)
