"""Golden compile output: what `orchestrate compile` writes for the bundled fleet, file by file,
against tests/golden/bundled/. A change to the compiler's output shows here as a readable diff;
when it is meant, refresh the files and review them like code:

    python3 -m pytest tests/test_golden.py --update-golden && git diff tests/golden

Roles copied verbatim from a role folder are not kept here (their source is), and the manifest
is kept as the names of its inputs and outputs (its hashes change with every role edit). JSON
files are kept indented, so that a change reads line by line (that the build itself is
byte-identical from run to run is tests/test_ansible_tools.py's)."""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUNDLED, REPO, Run

GOLDEN = REPO / "tests" / "golden" / "bundled"
ROLE_SOURCES = (BUNDLED / "roles", REPO / "orchestrator" / "roles")


def _copied(name: str, data: bytes) -> bool:
    """A role file the compiler copied as it is (its source is under version control)."""
    parts = name.split("/", 2)
    if parts[0] != "roles" or len(parts) < 3:
        return False
    for base in ROLE_SOURCES:
        source = base / parts[1] / parts[2]
        if source.is_file() and source.read_bytes() == data:
            return True
    return False


def golden_view(build: Path) -> dict[str, bytes]:
    view: dict[str, bytes] = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        name = path.relative_to(build).as_posix()
        data = path.read_bytes()
        if name == "manifest.json":
            manifest = json.loads(data)
            names = {k: sorted(manifest[k]) for k in ("inputs", "outputs")}
            data = (json.dumps({"fleet": manifest["fleet"], **names}, indent=2) + "\n").encode()
        elif name.startswith("secrets/") or _copied(name, data):
            continue
        elif name.endswith(".json"):  # written compact; kept indented, to diff line by line
            data = (json.dumps(json.loads(data), indent=1, sort_keys=True) + "\n").encode()
        view[name] = data
    return view


def _on_disk() -> dict[str, bytes]:
    if not GOLDEN.is_dir():
        return {}
    return {
        p.relative_to(GOLDEN).as_posix(): p.read_bytes()
        for p in sorted(GOLDEN.rglob("*"))
        if p.is_file()
    }


def _diff(name: str, want: bytes, got: bytes) -> list[str]:
    return list(
        difflib.unified_diff(
            want.decode(errors="replace").splitlines(),
            got.decode(errors="replace").splitlines(),
            f"golden/{name}",
            f"compiled/{name}",
            lineterm="",
            n=2,
        )
    )


def test_the_bundled_fleet_compiles_to_its_golden_files(
    cli: Callable[..., Run], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "build"
    r = cli("--fleet", str(BUNDLED), "compile", "-o", str(out))
    assert r.code == 0, r.err
    got = golden_view(out)
    if request.config.getoption("--update-golden"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, data in got.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_bytes(data)
    want = _on_disk()
    lines: list[str] = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            lines.append(f"- {name}: in the golden files, no longer written")
        elif name not in want:
            lines.append(f"+ {name}: written, not in the golden files")
        elif want[name] != got[name]:
            lines += _diff(name, want[name], got[name])
    hint = "meant? python3 -m pytest tests/test_golden.py --update-golden, then review git diff"
    assert not lines, "\n".join([*lines[:300], hint])


def test_the_view_leaves_out_only_verbatim_copies(tmp_path: Path) -> None:
    """A copied role file that the compiler changed would be kept (and so would show)."""
    build = tmp_path / "b"
    (build / "roles/base/tasks").mkdir(parents=True)
    source = REPO / "orchestrator/roles/base/tasks/main.yml"
    (build / "roles/base/tasks/main.yml").write_bytes(source.read_bytes())
    (build / "roles/base/tasks/extra.yml").write_text("- name: not in the role\n")
    (build / "manifest.json").write_text(
        json.dumps({"fleet": "f", "inputs": {"b": "1", "a": "2"}, "outputs": {"x": "3"}})
    )
    view = golden_view(build)
    assert set(view) == {"roles/base/tasks/extra.yml", "manifest.json"}
    kept = json.loads(view["manifest.json"])
    assert kept == {"fleet": "f", "inputs": ["a", "b"], "outputs": ["x"]}
