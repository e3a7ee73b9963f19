"""A large fleet is evaluated in parts, in forked processes (orchestrator/evaluator/parallel.py):
the build, the warnings and the errors must be those of one process, whichever part finishes
first and whatever a part meets."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUNDLED, REPO, Run, snapshot

from orchestrator import forks
from orchestrator.evaluator import parallel

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_fleet

HOSTS = 48


def _synthetic(root: Path) -> Path:
    """The benchmark's fleet, small: shared modules, cross-host reads, monitors over all."""
    bench_fleet.generate(HOSTS, root)
    return root


def _compile(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path, out: Path, parts: int
) -> tuple[Run, dict[str, bytes]]:
    monkeypatch.setattr(parallel, "parts_wanted", lambda hosts: parts)
    monkeypatch.setattr(parallel, "BATCH", 2)  # small fleets: copies send before they end
    r = cli("--fleet", str(root), "compile", "-o", str(out))
    r.err = re.sub(r" in [0-9.]+s\b", " in Ns", r.err)  # the one line that says how long
    return r, snapshot(out) if out.is_dir() else {}


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("which", ["bundled", "synthetic"])
def test_parts_compile_what_one_process_compiles(
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    which: str,
    parts: int,
) -> None:
    if which == "bundled":
        root = tmp_path / "fleet"
        shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(".orchestrate"))
    else:
        root = _synthetic(tmp_path / "fleet")
    one, want = _compile(cli, monkeypatch, root, tmp_path / "one", 1)
    joined: list[object] = []
    evaluate_parts = parallel.evaluate_parts

    def spy(*args: object) -> object:
        joined.append(evaluate_parts(*args))  # type: ignore[arg-type]
        return joined[-1]

    monkeypatch.setattr(parallel, "evaluate_parts", spy)
    many, got = _compile(cli, monkeypatch, root, tmp_path / "many", parts)
    assert one.code == many.code == 0, many.err
    assert (many.out, many.err.replace("many", "one")) == (one.out, one.err)
    assert got == want
    assert len(joined) == 1 and joined[0] is not None  # the parts' results were the build's


def _break(root: Path, host: int, line: str) -> None:
    path = root / "hosts" / f"{bench_fleet.host_name(host)}.yaml"
    path.write_text(path.read_text() + line + "\n")


@pytest.mark.parametrize(
    "line",
    [
        "  services.svc01.port: 70000",  # a type error on one host
        "  services.openssh.port: !force 1",  # an assertion that fails
        "  services.svc99.enable: true",  # an unknown option
        '  system.motd: "${hosts.nowhere.deploy.host}"',  # an unknown host
        "  system.motd: [unclosed",  # a file that does not load (read ahead by a copy)
    ],
)
def test_what_a_part_meets_is_reported_as_one_process_reports_it(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, line: str
) -> None:
    root = _synthetic(tmp_path / "fleet")
    _break(root, HOSTS - 3, line)  # in the last part
    one, _ = _compile(cli, monkeypatch, root, tmp_path / "one", 1)
    many, written = _compile(cli, monkeypatch, root, tmp_path / "many", 2)
    assert one.code == many.code == 1
    assert many.err == one.err
    assert written == {}


def test_a_part_that_dies_is_evaluated_again_here(
    cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _synthetic(tmp_path / "fleet")
    _one, want = _compile(cli, monkeypatch, root, tmp_path / "one", 1)

    def broken(start: int, batch: list[parallel.Done]) -> bytes:
        raise MemoryError  # in the copy only: this process does not encode

    monkeypatch.setattr(parallel, "_encode", broken)
    many, got = _compile(cli, monkeypatch, root, tmp_path / "many", 2)
    assert many.code == 0, many.err
    assert got == want


def test_parts_are_consecutive_and_cover_every_host() -> None:
    names = [f"h{i}" for i in range(10)]
    chunks = forks.split(names, 3)
    assert chunks == [names[:4], names[4:7], names[7:]]
    assert forks.split(names[:1], 2) == [["h0"], []]
