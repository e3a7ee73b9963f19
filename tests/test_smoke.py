"""The bundled fleet compiles and answers queries through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import BUNDLED, Run


def test_bundled_fleet_compiles(cli: Callable[..., Run], tmp_path: Path) -> None:
    out = tmp_path / "build"
    r = cli("--fleet", str(BUNDLED), "compile", "--out", str(out))
    assert r.code == 0, r.err
    data = json.loads((out / "fleet.json").read_text())
    assert set(data["hosts"]) >= {"terminal-zero", "data-storage", "LINDA", "cortex-alpha"}
