"""Write the build: inventory, generated roles, site playbook, ansible.cfg, query data and a
manifest of input and output hashes. Files are produced in memory, written to a temporary
folder beside the target and swapped in only when everything succeeded; output is byte-identical
for identical inputs (sorted keys, no timestamps, no absolute paths)."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator import __version__
from orchestrator.compiler.content import render_outputs
from orchestrator.errors import UsageError
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.loader.fleet import LIBRARY_PREFIX, library_root, shipped_roles_dir
from orchestrator.loader.yamlfile import file_digest

MANIFEST = "manifest.json"
QUERY_DATA = "fleet.json"


@dataclass(frozen=True)
class BuildResult:
    out_dir: str
    files: int
    hosts: int
    roles: int


def input_files(ev: Evaluation) -> list[str]:
    from orchestrator.compiler.content import existing_roles

    files = {ev.spec.file, *ev.modules}
    for folder in existing_roles(ev).values():
        for base, _dirs, names in os.walk(folder):
            files.update(os.path.join(base, n) for n in names)
    for folder in ev.spec.lib_dirs:
        if os.path.isdir(folder):
            files.update(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))
    return sorted(files)


def input_name(path: str, root: str) -> str:
    """How an input is named in the manifest: relative to the fleet, or ``orchestrate:...``."""
    for prefix, folder in (
        (LIBRARY_PREFIX, library_root()),
        ("orchestrate-roles:", shipped_roles_dir()),
    ):
        folder = os.path.normpath(folder)
        if path.startswith(folder + os.sep):
            return prefix + os.path.relpath(path, folder)
    return os.path.relpath(path, root)


def input_path(name: str, root: str) -> str:
    """The file behind a manifest input name (the inverse of input_name)."""
    for prefix, folder in _prefixes():
        if name.startswith(prefix):
            return os.path.join(folder, name[len(prefix) :])
    return os.path.join(root, name)


def _prefixes() -> tuple[tuple[str, str], ...]:
    return ((LIBRARY_PREFIX, library_root()), ("orchestrate-roles:", shipped_roles_dir()))


def _sha256(path: str) -> str:
    return file_digest(path)


def input_hashes(ev: Evaluation) -> dict[str, str]:
    return {input_name(p, ev.spec.root): _sha256(p) for p in input_files(ev)}


def compile_fleet(ev: Evaluation, out_dir: str) -> BuildResult:
    """Render everything, then write it to ``out_dir`` atomically."""
    outputs = render_outputs(ev)
    manifest = {
        "tool": "orchestrate",
        "version": __version__,
        "tool_digest": tool_digest(),
        "fleet": ev.spec.name,
        "inputs": input_hashes(ev),
        "outputs": {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(outputs.items())
        },
    }
    outputs[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    _write_atomically(outputs, out_dir)
    _write_stamp(out_dir, ev, hashlib.sha256(outputs[MANIFEST]).hexdigest())
    roles = {n.split("/")[1] for n in outputs if n.startswith("roles/")}
    return BuildResult(out_dir, len(outputs), len(ev.hosts), len(roles))


def _write_atomically(outputs: dict[str, bytes], out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if (
        os.path.exists(out_dir)
        and not os.path.isfile(os.path.join(out_dir, MANIFEST))
        and os.listdir(out_dir)
    ):
        raise UsageError(
            f"{out_dir} exists and is not an orchestrate build; refusing to replace it"
        )
    tmp = tempfile.mkdtemp(prefix=".build-", dir=parent)
    try:
        made: set[str] = set()
        for name in sorted(outputs):
            path = os.path.join(tmp, name)
            folder = os.path.dirname(path)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            with open(path, "wb") as fh:
                fh.write(outputs[name])
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "build"))
        os.rename(tmp, out_dir)
        if old:
            _remove_later(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def _remove_later(folder: str) -> None:
    """Delete a replaced build in the background: on a large fleet that is thousands of
    unlinks the user need not wait for. A folder left by an interrupted deletion is swept by
    the next compile."""
    parent = os.path.dirname(folder)
    stale = [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(".old-")]
    subprocess.Popen(
        ["rm", "-rf", "--", *stale],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stamp_path(out_dir: str) -> str:
    out_dir = os.path.abspath(out_dir)
    return os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}-stamp.json")


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _write_stamp(out_dir: str, ev: Evaluation, manifest_sha: str) -> None:
    """Beside the build (not in it, which must not depend on the machine): each input's mtime
    and size when it was compiled, so that `query` and `inventory` can tell a build is fresh
    from stat() calls instead of hashing every file again."""
    stamp = {"manifest": manifest_sha, "inputs": {p: _stat_key(p) for p in input_files(ev)}}
    tmp = _stamp_path(out_dir) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(stamp, fh)
    os.replace(tmp, _stamp_path(out_dir))


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
            if _sha256(path) != digest:
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
