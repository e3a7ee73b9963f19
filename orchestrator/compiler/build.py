"""Write the build: inventory, generated roles, site playbook, ansible.cfg, query data and a
manifest of input and output hashes. Files are produced in memory, written to a temporary
folder beside the target and swapped in only when everything succeeded; output is byte-identical
for identical inputs (sorted keys, no timestamps, no absolute paths)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from orchestrator import __version__
from orchestrator.compiler.content import render_outputs
from orchestrator.compiler.freshness import (
    MANIFEST,
    prefixes,
    sha256_file,
    tool_digest,
    write_stamp,
)
from orchestrator.errors import UsageError
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.paths import shipped_roles_dir


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
    secrets = os.path.join(ev.spec.root, "secrets")
    if os.path.isdir(secrets):
        for base, dirs, names in os.walk(secrets):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files.update(os.path.join(base, n) for n in names if not n.startswith("."))
        role = os.path.join(shipped_roles_dir(), "orchestrate_secrets")
        for base, dirs, names in os.walk(role):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files.update(os.path.join(base, n) for n in names)
    for folder in ev.spec.lib_dirs:
        if os.path.isdir(folder):
            files.update(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))
    return sorted(files)


def input_name(path: str, root: str) -> str:
    """How an input is named in the manifest: relative to the fleet, or ``orchestrate:...``."""
    for prefix, folder in prefixes():
        folder = os.path.normpath(folder)
        if path.startswith(folder + os.sep):
            return prefix + os.path.relpath(path, folder)
    return os.path.relpath(path, root)


def input_hashes(ev: Evaluation) -> dict[str, str]:
    return {input_name(p, ev.spec.root): sha256_file(p) for p in input_files(ev)}


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
    write_stamp(out_dir, input_files(ev), hashlib.sha256(outputs[MANIFEST]).hexdigest())
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
