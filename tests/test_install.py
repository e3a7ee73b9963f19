"""Installed the way people install command-line tools (a wheel in a fresh venv, outside the
checkout), orchestrate has its library, roles, playbooks and schemas, and compiles the bundled
fleet to the same build as a checkout does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUNDLED, REPO

pytestmark = pytest.mark.install


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _fleet_copy(where: Path) -> Path:
    shutil.copytree(BUNDLED, where, ignore=shutil.ignore_patterns(".orchestrate"))
    return where


def _outputs(root: Path) -> dict[str, str]:
    manifest = json.loads((root / ".orchestrate" / "build" / "manifest.json").read_text())
    outputs: dict[str, str] = manifest["outputs"]
    return outputs


def test_a_wheel_in_a_fresh_venv_compiles_the_bundled_fleet_as_a_checkout_does(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
         tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("orchestrate-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path)
    # the installed command, from a folder that is not the checkout, with nothing of it on paths
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ORCHESTRATE_FLEET")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    installed = _fleet_copy(tmp_path / "installed")
    _run(["orchestrate", "--fleet", str(installed), "compile"], tmp_path, env)
    version = _run(["orchestrate", "--version"], tmp_path, env)
    assert version.strip() == "orchestrate 0.1.0"  # a wheel names no checkout
    where = "import orchestrator; print(orchestrator.__file__)"
    site = _run([str(venv / "bin" / "python"), "-c", where], tmp_path, env)
    assert str(REPO) not in site and str(venv) in site
    checkout = _fleet_copy(tmp_path / "checkout")
    _run([sys.executable, "-m", "orchestrator.cli", "--fleet", str(checkout), "compile"], REPO)
    assert _outputs(installed) == _outputs(checkout)
    assert "roles/orchestrate_secrets/tasks/main.yml" in _outputs(installed)
