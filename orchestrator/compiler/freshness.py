"""Whether a build is current, and reading it: the part of the compiler that `query` and
`inventory` need, kept free of heavy imports so that those commands start fast."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import re
from typing import Any

import orjson

from orchestrator import __version__
from orchestrator.digest import file_digest
from orchestrator.paths import shipped_name, shipped_path, state_dir

MANIFEST = "manifest.json"
QUERY_DATA = "fleet.json"


def input_name(path: str, root: str) -> str:
    """How an input is named in the manifest: relative to the fleet, or ``orchestrate:...``."""
    return shipped_name(path) or os.path.relpath(path, root)


def input_path(name: str, root: str) -> str:
    """The file behind a manifest input name (the inverse of input_name)."""
    return shipped_path(name) or os.path.join(root, name)


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


def stamp_path(out_dir: str, root: str) -> str:
    """Where the stamp of the build in ``out_dir`` is kept: in the fleet's own .orchestrate/,
    named after the build's resolved path. Not in the build, whose files must not depend on
    the machine, and not beside an --out folder, which is the user's."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(out_dir))).hexdigest()[:32]
    return os.path.join(state_dir(root), "stamps", f"{key}.json")


_OUT = re.compile(rb'"out": ("(?:[^"\\]|\\.)*")')


def prune_stamps(keep: str) -> None:
    """Remove the stamps of builds that are gone (an --out folder deleted or moved): one is
    written per build folder (``keep`` is the one just written), and nothing else would ever
    remove them. Best effort."""
    folder = os.path.dirname(keep)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if path == keep or not name.endswith(".json"):
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(8192)  # "out" is the stamp's second key: no need to parse it all
            found = _OUT.search(head)
            out = json.loads(found.group(1)) if found else None
            if not isinstance(out, str) or not os.path.isfile(os.path.join(out, MANIFEST)):
                os.unlink(path)
        except (OSError, ValueError):
            continue


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def stamp_bytes(
    out_dir: str,
    root: str,
    files: list[str],
    folders: list[str],
    manifest_sha: str,
    known: dict[str, list[int]] | None = None,
) -> bytes:
    """The build's freshness stamp: each input's mtime and size when it was compiled, and those
    of the folders they are in (a file added to secrets/ or a lib folder changes its folder's
    mtime), so that `query` and `inventory` can tell a build is fresh from stat() calls instead
    of hashing every file again. The stamp names the fleet and the build folder it was made
    for: a copied or moved fleet or build (whose stamp names the original's files) is checked
    by content instead."""
    watched = sorted(os.path.relpath(f, root) for f in folders)
    folders = sorted({*folders, *(os.path.dirname(p) for p in files)})
    keys = known or {}
    stamp = {
        "root": os.path.realpath(root),
        "out": os.path.realpath(out_dir),
        "manifest": manifest_sha,
        "inputs": {p: keys.get(p) or _stat_key(p) for p in [*files, *folders]},
        "watched": watched,  # relative: a copy's own folders are listed against the manifest
    }
    return json.dumps(stamp).encode()


def _stamp_says_fresh(out_dir: str, root: str, manifest_bytes: bytes) -> bool:
    try:
        with open(stamp_path(out_dir, root), encoding="utf-8") as fh:
            stamp = json.load(fh)
    except (OSError, ValueError):
        return False
    if (
        not isinstance(stamp, dict)
        or stamp.get("manifest") != hashlib.sha256(manifest_bytes).hexdigest()
    ):
        return False
    if (stamp.get("root"), stamp.get("out")) != (os.path.realpath(root), os.path.realpath(out_dir)):
        return False  # made for another fleet folder or build (a copy): compare contents
    inputs = stamp.get("inputs")
    return isinstance(inputs, dict) and all(_stat_key(p) == key for p, key in inputs.items())


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
    if _stamp_says_fresh(out_dir, root, raw):
        return True
    inputs = manifest.get("inputs", {})
    if any(_listing(root, rel) != _names_below(inputs, rel) for rel in _watched(out_dir, root)):
        return False  # a file was added to (or removed from) secrets/ or a lib folder
    for name, digest in inputs.items():
        path = input_path(name, root)
        try:
            if sha256_file(path) != digest:
                return False
        except OSError:
            return False
    return True


def _watched(out_dir: str, root: str) -> list[str]:
    """The folders (relative to the fleet) whose every file is an input, from the stamp."""
    try:
        with open(stamp_path(out_dir, root), encoding="utf-8") as fh:
            found = json.load(fh).get("watched", ["secrets"])
    except (OSError, ValueError, AttributeError):
        found = ["secrets"]
    return [f for f in found if isinstance(f, str) and not os.path.isabs(f) and ".." not in f]


def _listing(root: str, rel: str) -> set[str]:
    """The files below ``rel`` as the manifest names them, chosen as the compiler chooses its
    inputs: every file of secrets/ but dot files, the ``*.py`` files of a lib folder."""
    folder = os.path.join(root, rel)
    if rel != "secrets":
        try:
            return {os.path.join(rel, n) for n in os.listdir(folder) if n.endswith(".py")}
        except OSError:
            return set()
    out = set()
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith("."):
                out.add(os.path.relpath(os.path.join(base, n), root))
    return out


def _names_below(inputs: dict[str, Any], rel: str) -> set[str]:
    return {n for n in inputs if n.startswith(rel.rstrip("/") + "/")}


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
