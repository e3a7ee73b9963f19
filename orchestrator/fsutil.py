"""Writing files so that a crash leaves either the old content or the new, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it, then rename it over."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_json(path: str, data: Any, mode: int = 0o600) -> None:
    """``data`` as indented, key-sorted JSON at ``path``, atomically; its folder is made (0700)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode)
