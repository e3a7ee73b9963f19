"""Incremental compiles (orchestrator/compiler/incremental.py): after each edit of the
benchmark's synthetic fleet, the build an incremental compile writes is byte for byte the one
a full compile writes, only the hosts it has to evaluate are evaluated again, and whatever the
cache cannot account for makes a full compile."""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Run, snapshot, write_tree

from orchestrator.compiler import cache as store
from orchestrator.compiler import incremental
from orchestrator.compiler.build import BuildResult
from orchestrator.errors import FleetErrors
from orchestrator.evaluator import parallel
from orchestrator.pipeline import build, compile_build

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_fleet

HOSTS = 36
MONITORS = [bench_fleet.host_name(i) for i in bench_fleet.monitor_indices(HOSTS)]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The synthetic fleet, compiled once in full; the key that signs caches in a folder of
    the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    fleet = tmp_path / "fleet"
    bench_fleet.generate(HOSTS, fleet)
    build(str(fleet))
    return fleet


def _host_file(root: Path, i: int) -> Path:
    return root / "hosts" / f"{bench_fleet.host_name(i)}.yaml"


def _set(root: Path, i: int, option: str, value: str | None) -> None:
    """Set (or, with None, remove) one option's line in host ``i``'s own file."""
    path = _host_file(root, i)
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(f"  {option}:")]
    if value is not None:
        lines.append(f"  {option}: {value}")
    path.write_text("\n".join(lines) + "\n")


def _same_as_full(root: Path, tmp_path: Path) -> BuildResult:
    """Compile as `orchestrate compile` does, then in full into another folder: the two
    builds must be the same bytes."""
    got = compile_build(str(root))[1]
    full = tmp_path / "full-build"
    build(str(root), str(full))
    assert snapshot(root / ".orchestrate" / "build") == snapshot(full)
    return got


def _readers_of_anchor(anchor: int) -> set[str]:
    """The hosts that read the anchor's svc01 port (bench_fleet's host modules)."""
    found = set()
    for i in range(HOSTS):
        read = i % bench_fleet.ANCHORS
        if read == i:
            read = (i + 1) % bench_fleet.ANCHORS
        if read == anchor:
            found.add(bench_fleet.host_name(i))
    return found


def test_a_one_host_edit_evaluates_that_host_alone(
    root: Path, tmp_path: Path, cli: Callable[..., Run]
) -> None:
    _set(root, 10, "services.svc01.port", "23456")
    assert _same_as_full(root, tmp_path).evaluated == ("host-00010",)
    _set(root, 10, "system.timezone", "Asia/Tokyo")
    r = cli("--fleet", str(root), "compile")
    assert r.code == 0 and "(1 evaluated again)" in r.err, r.err
    r = cli("--fleet", str(root), "compile")  # nothing changed: nothing evaluated
    assert "(0 evaluated again)" in r.err
    r = cli("--fleet", str(root), "compile", "--full")
    assert r.code == 0 and "evaluated again" not in r.err


def test_an_edit_of_a_value_other_hosts_read_evaluates_them_too(root: Path, tmp_path: Path) -> None:
    _set(root, 2, "services.svc01.port", "23456")  # host-00002 is an anchor
    got = _same_as_full(root, tmp_path)
    assert got.evaluated is not None
    # and the anchors that read each other in a ring: read by the hosts evaluated again, and
    # reading them, they may not be what they were
    ring = {bench_fleet.host_name(i) for i in range(bench_fleet.ANCHORS)}
    assert set(got.evaluated) == {"host-00002", *_readers_of_anchor(2), *ring}


def test_a_value_every_monitor_scans_for(root: Path, tmp_path: Path) -> None:
    _set(root, 10, "services.svc05.enable", None)  # an even host: it had svc05
    got = _same_as_full(root, tmp_path)
    assert got.evaluated is not None and set(got.evaluated) == {"host-00010", *MONITORS}


def test_random_edits_give_the_full_compiles_build(root: Path, tmp_path: Path) -> None:
    (root / "modules" / "extra.yaml").write_text(
        "# A module of a few hosts' own.\nconfig:\n  environment.system_packages: [jq]\n"
    )
    rng = random.Random(19)
    edits: list[Callable[[int], None]] = [
        lambda i: _set(root, i, "services.svc01.port", str(rng.randrange(20000, 30000))),
        lambda i: _set(root, i, "services.svc05.enable", rng.choice(["true", "false", None])),
        lambda i: _set(root, i, "system.timezone", rng.choice(["UTC", "Europe/Paris", None])),
        lambda i: _set(root, i, "services.svc07.extra_args", rng.choice(["[-v]", "!force [-q]"])),
        lambda i: _import_extra(root, i, rng.random() < 0.7),
    ]
    for _ in range(6):
        hosts = rng.sample(range(HOSTS), rng.choice([1, 1, 2]))
        for i in hosts:
            rng.choice(edits)(i)
        got = _same_as_full(root, tmp_path)
        assert got.evaluated is not None  # each was incremental


def _import_extra(root: Path, i: int, on: bool) -> None:
    path = _host_file(root, i)
    text = path.read_text().replace("imports: [../modules/extra.yaml]\n", "")
    path.write_text(("imports: [../modules/extra.yaml]\n" if on else "") + text)


def test_parts_of_a_full_compile_record_what_their_hosts_read(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "parts_wanted", lambda hosts: 3)
    monkeypatch.setattr(parallel, "BATCH", 2)
    build(str(root))
    monkeypatch.setattr(parallel, "parts_wanted", lambda hosts: 1)
    _set(root, 2, "services.svc01.port", "24680")  # an anchor
    got = _same_as_full(root, tmp_path)
    assert got.evaluated is not None and set(got.evaluated) > _readers_of_anchor(2)


def test_a_module_every_host_imports_recompiles_everything(root: Path, tmp_path: Path) -> None:
    common = root / "modules" / "common.yaml"
    common.write_text(common.read_text().replace("ll: ls -alF", "ll: ls -l"))
    assert _same_as_full(root, tmp_path).evaluated is None


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_host_added_or_removed_recompiles_everything(
    root: Path, tmp_path: Path, change: str
) -> None:
    fleet = root / "fleet.yaml"
    text = fleet.read_text()
    if change == "add":
        entry = "  host-99999:\n    builder: x86_64\n    modules: [hosts/host-00010.yaml]\n"
        fleet.write_text(text.replace("images:", entry + "images:"))
    else:
        fleet.write_text(re.sub(r"  host-00010:\n(    .*\n)+", "", text))
    assert _same_as_full(root, tmp_path).evaluated is None
    _set(root, 11, "services.svc01.port", "21212")
    assert _same_as_full(root, tmp_path).evaluated == ("host-00011",)


def _state(root: Path) -> dict[str, bytes]:
    return snapshot(root / ".orchestrate" / "build") | {
        f"cache/{k}": v for k, v in snapshot(root / ".orchestrate" / "cache").items()
    }


@pytest.mark.parametrize(
    "line",
    [
        ("services.svc01.port", "70000"),  # a type error
        ("services.openssh.port", "!force 1"),  # an assertion that fails
        ("system.motd", '"${hosts.nowhere.deploy.host}"'),  # an unknown host
    ],
)
def test_a_bad_edit_fails_as_a_full_compile_does_and_keeps_the_build(
    root: Path, tmp_path: Path, line: tuple[str, str]
) -> None:
    compile_build(str(root))
    before = _state(root)
    _set(root, 10, *line)
    with pytest.raises(FleetErrors) as incremental_error:
        compile_build(str(root))
    with pytest.raises(FleetErrors) as full_error:
        build(str(root), str(tmp_path / "full-build"))
    assert str(incremental_error.value) == str(full_error.value)
    assert incremental_error.value.problems == full_error.value.problems
    assert _state(root) == before
    _set(root, 10, line[0], None)
    _set(root, 10, "services.svc01.port", "22222")
    assert _same_as_full(root, tmp_path).evaluated == ("host-00010",)


def test_a_compile_killed_before_its_cache_is_written_is_not_trusted_next_time(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    _set(root, 10, "services.svc01.port", "23456")
    monkeypatch.setattr(store, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        compile_build(str(root))
    monkeypatch.undo()
    _set(root, 12, "services.svc01.port", "23457")
    assert _same_as_full(root, tmp_path).evaluated is None  # the cache names the old build


def test_a_compile_killed_before_the_swap_leaves_build_and_cache(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    before = _state(root)
    _set(root, 10, "services.svc01.port", "23456")
    monkeypatch.setattr(incremental, "write_patched", killed)
    with pytest.raises(KeyboardInterrupt):
        compile_build(str(root))
    assert _state(root) == before


def test_a_cache_whose_signature_fails_is_not_read(root: Path, tmp_path: Path) -> None:
    (path,) = (root / ".orchestrate" / "cache").iterdir()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    _set(root, 10, "services.svc01.port", "23456")
    assert _same_as_full(root, tmp_path).evaluated is None


def test_a_lib_file_or_a_new_one_recompiles_everything(root: Path, tmp_path: Path) -> None:
    fleet = root / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "lib: [lib]\n")
    (root / "lib").mkdir()
    assert _same_as_full(root, tmp_path).evaluated is None
    (root / "lib" / "extra.py").write_text("# nothing yet\n")  # a new file in the lib folder
    _set(root, 10, "services.svc01.port", "23456")
    assert _same_as_full(root, tmp_path).evaluated is None
    _set(root, 10, "services.svc01.port", "23457")
    assert _same_as_full(root, tmp_path).evaluated == ("host-00010",)
    (root / "lib" / "extra.py").write_text("# a change\n")
    assert _same_as_full(root, tmp_path).evaluated is None


def test_query_after_an_edit_reads_the_incremental_build(
    root: Path, cli: Callable[..., Run]
) -> None:
    _set(root, 10, "services.svc01.port", "23456")
    r = cli("--fleet", str(root), "query", 'hosts."host-00010".config.services.svc01.port')
    assert r.code == 0 and r.out.strip() == "23456", r.err


def test_a_cycle_through_a_host_read_as_it_was_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ha.x reads hb.y, which reads ha.x: the edit leaves ha.x's value as it was (5), so no
    reader of a changed value is evaluated again; hb still is, since it reads ha."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    hosts = "".join(f"  h{c}: {{builder: x, modules: [h{c}.yaml]}}\n" for c in "abcd")
    root = write_tree(
        tmp_path / "fleet",
        {
            "fleet.yaml": "name: t\nbuilders: {x: {arch: x86_64}}\ndefaults: [base.yaml]\n"
            f"hosts:\n{hosts}",
            "base.yaml": "options:\n  a.x: {type: integer, default: 0}\n"
            "  a.y: {type: integer, default: 0}\n",
            "ha.yaml": "config:\n  a.x: 5\n",
            "hb.yaml": 'config:\n  a.y: "${hosts.ha.config.a.x}"\n',
            "hc.yaml": "config: {}\n",
            "hd.yaml": "config: {}\n",
        },
    )
    build(str(root))
    (root / "ha.yaml").write_text('config:\n  a.x: "${hosts.hb.config.a.y}"\n')
    with pytest.raises(FleetErrors) as incremental_error:
        compile_build(str(root))
    with pytest.raises(FleetErrors) as full_error:
        build(str(root), str(tmp_path / "full-build"))
    assert "reference cycle" in str(full_error.value)
    assert str(incremental_error.value) == str(full_error.value)


def test_a_build_swapped_in_meanwhile_is_not_mixed_into_this_one(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another compile replaces the build while this one evaluates: this one still makes its
    build of the one it started from (or, that one gone, compiles in full)."""
    settle = incremental._settle

    def meanwhile(*args: object) -> object:
        found = settle(*args)  # type: ignore[arg-type]
        _set(root, 20, "system.timezone", "Asia/Tokyo")
        build(str(root))  # another compile, with another edit
        _set(root, 20, "system.timezone", None)  # as it was when this compile began
        return found

    _set(root, 10, "services.svc01.port", "23456")
    monkeypatch.setattr(incremental, "_settle", meanwhile)
    compile_build(str(root))
    monkeypatch.undo()
    full = tmp_path / "full-build"
    build(str(root), str(full))
    assert snapshot(root / ".orchestrate" / "build") == snapshot(full)


def test_a_fleet_with_warnings_compiles_in_full_and_warns_each_time(
    root: Path, tmp_path: Path
) -> None:
    for i in range(0, HOSTS, 2):
        _set(root, i, "services.svc05.enable", None)  # the monitors have nothing to scrape
    warnings, got = compile_build(str(root))
    assert got.evaluated is None and len(warnings) == len(MONITORS)
    _set(root, 11, "services.svc01.port", "21212")
    warnings, got = compile_build(str(root))
    assert got.evaluated is None and len(warnings) == len(MONITORS)
    assert not list((root / ".orchestrate" / "cache").glob("*.pickle"))
