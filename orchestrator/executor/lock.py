"""The fleet lock: one run (plan, apply, scheduled) at a time per fleet.

An flock on `.orchestrate/lock`: the kernel releases it when its holder dies, so a lock left by a
killed process is never mistaken for a live one; the file records who holds it, for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from types import TracebackType

from orchestrator import exitcodes
from orchestrator.errors import OrchestrateError


class LockHeld(OrchestrateError):
    exit_code = exitcodes.LOCKED


class FleetLock:
    def __init__(self, state_dir: str, what: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "lock")
        self.what = what
        self.fd: int | None = None
        self.reclaimed: dict[str, object] | None = None

    def __enter__(self) -> FleetLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = f"pid {holder.get('pid')}, {holder.get('what')}" if holder else "unknown"
            raise LockHeld(
                f"another run holds the fleet's lock ({who}); try again when it ends"
            ) from None
        previous = _read(fd)
        if previous and not _alive(int(str(previous.get("pid", 0)))):
            self.reclaimed = previous  # a stale record from a process that died
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps({"pid": os.getpid(), "what": self.what, "since": int(time.time())}).encode(),
            0,
        )
        self.fd = fd
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict[str, object]:
    try:
        data = os.pread(fd, 4096, 0)
        found = json.loads(data) if data else {}
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
