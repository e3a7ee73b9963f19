"""Whether a build is current, and reading it: the part of the compiler that `query` and
`inventory` need, kept free of heavy imports so that those commands start fast."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
from typing import Any

import orjson

from orchestrator import __version__
from orchestrator.digest import file_digest
from orchestrator.fsutil import atomic_write
from orchestrator.paths import LIBRARY_PREFIX, ROLES_PREFIX, library_root, shipped_roles_dir

MANIFEST = "manifest.json"
QUERY_DATA = "fleet.json"


def input_path(name: str, root: str) -> str:
    """The file behind a manifest input name (the inverse of input_name)."""
    for prefix, folder in prefixes():
        if name.startswith(prefix):
            return os.path.join(folder, name[len(prefix) :])
    return os.path.join(root, name)


def prefixes() -> tuple[tuple[str, str], ...]:
    return ((LIBRARY_PREFIX, library_root()), (ROLES_PREFIX, shipped_roles_dir()))


def sha256_file(path: str) -> str:
    return file_digest(path)


@functools.cache
def tool_digest() -> str:
    """A hash of orchestrate's own code and schemas: a build made by other code is stale."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for base, dirs, names in os.walk(package, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for n in sorted(names):
            if n.endswith((".py", ".json", ".conf", ".sh")) or n == "Containerfile":
                path = os.path.join(base, n)
                h.update(os.path.relpath(path, package).encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def _stamp_path(out_dir: str) -> str:
    out_dir = os.path.abspath(out_dir)
    return os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}-stamp.json")


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def write_stamp(out_dir: str, files: list[str], manifest_sha: str) -> None:
    """Beside the build (not in it, which must not depend on the machine): each input's mtime
    and size when it was compiled, so that `query` and `inventory` can tell a build is fresh
    from stat() calls instead of hashing every file again."""
    stamp = {"manifest": manifest_sha, "inputs": {p: _stat_key(p) for p in files}}
    # a fresh temporary name (not a fixed one that a planted link could redirect)
    atomic_write(_stamp_path(out_dir), json.dumps(stamp).encode(), 0o644)


def _stamp_says_fresh(out_dir: str, manifest_bytes: bytes) -> bool:
    try:
        with open(_stamp_path(out_dir), encoding="utf-8") as fh:
            stamp = json.load(fh)
    except (OSError, ValueError):
        return False
    if stamp.get("manifest") != hashlib.sha256(manifest_bytes).hexdigest():
        return False
    return all(_stat_key(p) == key for p, key in stamp.get("inputs", {}).items())


def is_fresh(out_dir: str, root: str) -> bool:
    """Whether the build in ``out_dir`` was made from the fleet's current files by this version."""
    try:
        with open(os.path.join(out_dir, MANIFEST), "rb") as fh:
            raw = fh.read()
        manifest = json.loads(raw)
    except (OSError, ValueError):
        return False
    if manifest.get("version") != __version__ or manifest.get("tool_digest") != tool_digest():
        return False
    if _stamp_says_fresh(out_dir, raw):
        return True
    for name, digest in manifest.get("inputs", {}).items():
        path = input_path(name, root)
        try:
            if sha256_file(path) != digest:
                return False
        except OSError:
            return False
    return True


def load_build_data(out_dir: str) -> dict[str, Any]:
    with open(os.path.join(out_dir, QUERY_DATA), "rb") as fh:
        raw = fh.read()
    # a large fleet is millions of small containers: collecting while they are made would
    # triple the time to read them
    enabled = gc.isenabled()
    gc.disable()
    try:
        data: dict[str, Any] = orjson.loads(raw)
    finally:
        if enabled:
            gc.enable()
    return data
