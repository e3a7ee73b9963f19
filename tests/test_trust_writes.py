"""The trust boundary of what orchestrate writes (issue 13, items 1 and 7): `compile --out`
replaces only its own builds, keeps its temporary and replaced builds in a folder of its own,
swaps a build in atomically, never writes outside the build whatever the fleet's names are;
files the user names are written through links and never over devices, FIFOs, sockets or
folders; a crash's traceback goes to a private file of the user's."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Run, orchestrate, write_tree

from orchestrator import cli as cli_module
from orchestrator.compiler import build
from orchestrator.errors import UsageError
from orchestrator.fsutil import atomic_move, private_folder, write_user_file


def _fleet_files(name: str = "t", host: str = "a") -> dict[str, str]:
    hosts = f"hosts:\n  {host}: {{builder: x}}\n"
    return {"fleet.yaml": f"name: {name}\nbuilders: {{x: {{arch: x86_64}}}}\n{hosts}"}


def _tree(folder: Path) -> dict[str, object]:
    """Every entry below ``folder`` (folders, links and special files too, without opening
    them): what proves that nothing was written, moved or replaced."""
    out: dict[str, object] = {}
    for base, dirs, names in os.walk(folder):
        if os.path.basename(base) == ".orchestrate-tmp":
            # a replaced build on its way out, removed in the background (conftest.snapshot)
            dirs[:] = [d for d in dirs if not d.startswith("old-")]
        for n in dirs + names:
            p = Path(base) / n
            st = p.lstat()
            rel = str(p.relative_to(folder))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("folder",)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), st.st_ino)
    return out


def _wait_gone(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.lexists(path), f"{path} was not removed"


def _wait_tool_dir_empty(work: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sorted(os.listdir(work)) == [".lock"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"left in {work}: {os.listdir(work)}")


def _work(root: Path) -> Path:
    """The fleet's own working folder, where builds are written before they are swapped in."""
    return root / ".orchestrate" / build.TOOL_DIR


def _compile(cli: Callable[..., Run], root: Path, out: Path) -> Run:
    # in full: these tests are of how a build is written, and an incremental compile of an
    # unchanged fleet writes nothing
    return cli("--fleet", str(root), "compile", "--out", str(out), "--full")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "fleet", _fleet_files())


# --- a. only a folder with the tool's own marker (or an earlier build's manifest) is replaced


def test_every_build_carries_the_fixed_marker(small: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "out" / "build"
    assert _compile(cli, small, out).code == 0
    marker = (out / build.BUILD_MARKER).read_bytes()
    assert marker.startswith(b"orchestrate build, marker format 1\n")
    assert str(tmp_path).encode() not in marker
    manifest = json.loads((out / "manifest.json").read_text())
    assert build.BUILD_MARKER in manifest["outputs"]
    first = _tree(out)
    assert _compile(cli, small, out).code == 0
    assert _tree(out) == first  # the marker keeps builds byte-identical


def _refused(cli, small: Path, tmp_path: Path, out: Path, pattern: str) -> None:
    before = _tree(tmp_path)
    r = _compile(cli, small, out)
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    assert re.search(pattern, r.err), r.err
    assert _tree(tmp_path) == before, "something was written"


def test_a_folder_with_another_tools_manifest_is_refused(small, tmp_path, cli) -> None:
    out = write_tree(
        tmp_path / "project",
        {"manifest.json": '{"name": "my-web-app", "tool": "webpack"}\n', "src/app.js": "x\n"},
    )
    _refused(
        cli,
        small,
        tmp_path,
        out,
        r"holds 2 entries \(manifest.json, src\).*not an orchestrate build",
    )


def test_a_folder_of_user_files_is_refused(small, tmp_path, cli) -> None:
    out = write_tree(tmp_path / "home", {f"f{i}": "mine\n" for i in range(5)})
    _refused(
        cli,
        small,
        tmp_path,
        out,
        r"holds 5 entries \(f0, f1, f2, \.\.\.\).*remove this one yourself",
    )


def test_a_fifo_manifest_is_not_a_build_and_does_not_hang(small, tmp_path, cli) -> None:
    out = tmp_path / "odd"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    _refused(cli, small, tmp_path, out, r"not an orchestrate build")


def test_a_huge_manifest_is_not_read(small, tmp_path, cli) -> None:
    out = tmp_path / "huge"
    out.mkdir()
    with open(out / "manifest.json", "wb") as fh:  # sparse: big by its size, not on the disk
        fh.write(b'{"tool": "orchestrate"}')
        fh.truncate(build.MAX_LEGACY_MANIFEST + 1)
    _refused(cli, small, tmp_path, out, r"not an orchestrate build")


def test_a_marker_that_is_a_symlink_does_not_count(small, tmp_path, cli) -> None:
    real = write_tree(tmp_path / "elsewhere", {"marker": "orchestrate build, marker format 1\n"})
    out = write_tree(tmp_path / "mine", {"notes.txt": "mine\n"})
    (out / build.BUILD_MARKER).symlink_to(real / "marker")
    _refused(cli, small, tmp_path, out, r"not an orchestrate build")


def test_a_file_at_out_is_refused(small, tmp_path, cli) -> None:
    out = write_tree(tmp_path, {"notes.txt": "mine\n"}) / "notes.txt"
    _refused(cli, small, tmp_path, out, r"notes.txt is a regular file, not a build folder")


def test_an_empty_folder_and_an_earlier_unmarked_build_are_replaced(small, tmp_path, cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _compile(cli, small, empty).code == 0
    assert (empty / build.BUILD_MARKER).is_file()
    legacy = write_tree(
        tmp_path / "legacy",
        {"manifest.json": '{"tool": "orchestrate", "version": "0.1"}\n', "site.yml": "old\n"},
    )
    assert _compile(cli, small, legacy).code == 0
    assert (legacy / build.BUILD_MARKER).is_file()
    assert json.loads((legacy / "manifest.json").read_text())["fleet"] == "t"


def test_out_through_a_symlink_keeps_the_link(small, tmp_path, cli) -> None:
    real = tmp_path / "real-build"
    link = tmp_path / "build-link"
    link.symlink_to(real.name)
    assert _compile(cli, small, link).code == 0
    assert _compile(cli, small, link).code == 0
    assert link.is_symlink() and os.readlink(link) == real.name
    assert (real / build.BUILD_MARKER).is_file()


# --- b. in-progress and replaced builds only in the tool's own folder


def test_replaced_builds_go_through_the_tool_folder_only(small, tmp_path, cli) -> None:
    parent = write_tree(
        tmp_path / "builds",
        {".old-notes": "mine\n", ".old-project/keep.txt": "mine\n", ".build-x/y": "mine\n"},
    )
    out = parent / "b"
    mine = sorted(os.listdir(parent))
    assert _compile(cli, small, out).code == 0
    assert sorted(os.listdir(parent)) == sorted([*mine, "b"])  # nothing beside --out
    work = _work(small)
    assert stat.S_IMODE(work.lstat().st_mode) == 0o700 and work.is_dir()
    before = _tree(parent)
    assert _compile(cli, small, out).code == 0
    _wait_tool_dir_empty(work)
    assert _tree(parent) == before  # the user's .old-* and .build-* stay


def test_the_tool_folder_must_be_a_real_private_folder(small, tmp_path, cli) -> None:
    parent = tmp_path / "builds"
    parent.mkdir()
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    _work(small).parent.mkdir()
    _work(small).symlink_to(decoy)
    before = _tree(tmp_path)
    r = _compile(cli, small, parent / "b")
    assert r.code == 1 and "symbolic link" in r.err, r.err
    assert _tree(tmp_path) == before


KILLER = """
import sys, time
from orchestrator.compiler import build
from orchestrator.cli import main

point, when = sys.argv[1], sys.argv[2]
real = getattr(build, point)

def paused(*args):
    if when == "after":
        real(*args)
    print("ready", flush=True)
    time.sleep(600)

setattr(build, point, paused)
main(["--fleet", sys.argv[3], "compile", "--out", sys.argv[4], *sys.argv[5:]])
"""


@pytest.mark.parametrize(
    "point,when",
    [
        ("_write_tree", "before"),
        ("_write_tree", "after"),
        ("_swap_in", "before"),
        ("_swap_in", "after"),
    ],
)
def test_a_killed_compile_leaves_only_tool_folder_entries(
    small, tmp_path, cli, point: str, when: str
) -> None:
    parent = write_tree(tmp_path / "builds", {".old-mine": "mine\n", "notes/a.txt": "mine\n"})
    out = parent / "b"
    assert _compile(cli, small, out).code == 0
    work = _work(small)
    _wait_tool_dir_empty(work)
    before = _tree(parent)
    # a full compile: with nothing changed, an incremental one would write nothing
    _killed_at(point, when, small, out, "--full")
    after = _tree(parent)
    assert after == before  # a whole build is in place
    leftovers = [n for n in os.listdir(work) if n != ".lock"]
    assert len(leftovers) == 1 and leftovers[0].startswith("build-")
    assert _compile(cli, small, out).code == 0
    _wait_tool_dir_empty(work)
    assert _tree(parent) == before


def _killed_at(point: str, when: str, root: Path, out: Path, *args: str) -> None:
    """A compile in another process, killed before or after it calls ``point`` of build.py."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLER, point, when, str(root), str(out), *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_killed_incremental_compile_leaves_the_build_and_only_tool_folder_entries(
    small, tmp_path, cli, when: str
) -> None:
    (small / "a.yaml").write_text("# one\n")
    fleet = small / "fleet.yaml"  # three hosts: one of them evaluated again is incremental
    mine = "{builder: x, modules: [a.yaml]}\n  b: {builder: x}\n  c: {builder: x}"
    fleet.write_text(fleet.read_text().replace("{builder: x}", mine))
    out = tmp_path / "b"
    assert _compile(cli, small, out).code == 0
    work = _work(small)
    _wait_tool_dir_empty(work)
    before = _tree(out)
    (small / "a.yaml").write_text("# two\n")
    _killed_at("_link_tree", when, small, out)  # while the changed build is made
    assert _tree(out) == before
    leftovers = [n for n in os.listdir(work) if n != ".lock"]
    assert len(leftovers) == 1 and leftovers[0].startswith("build-")
    r = cli("--fleet", str(small), "compile", "--out", str(out))
    assert r.code == 0 and "(1 evaluated again)" in r.err, r.err
    _wait_tool_dir_empty(work)


def test_a_sweep_skips_the_folder_a_live_compile_holds(tmp_path, monkeypatch) -> None:
    work = tmp_path / build.TOOL_DIR
    private_folder(str(work))
    swept: list[list[str]] = []

    def record(paths: list[str], locks: list[int]) -> None:
        swept.append(paths)
        for fd in locks:
            os.close(fd)

    monkeypatch.setattr(build, "_remove_later", record)
    with build._claimed(str(work)) as live:
        build._sweep(str(work))
        assert swept == []
    build._sweep(str(work))
    assert swept == [[live]]


def test_a_build_on_another_file_system_gets_its_working_folder_beside_it(
    small: Path, tmp_path: Path, cli
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    parent = Path(tempfile.mkdtemp(dir=shm))
    try:
        out = parent / "b"
        assert _compile(cli, small, out).code == 0
        assert _compile(cli, small, out).code == 0  # the exchange works there too
        assert sorted(os.listdir(parent)) == [build.TOOL_DIR, "b"]
        assert (out / build.BUILD_MARKER).is_file()
        _wait_tool_dir_empty(parent / build.TOOL_DIR)
    finally:
        shutil.rmtree(parent)


def test_a_file_another_program_wrote_is_moved_in_whole(tmp_path: Path) -> None:
    """atomic_move (sops writes its own output): renamed on one file system, copied beside the
    target and renamed across two; either way the target has the new bytes and mode."""
    target = tmp_path / "db.yaml"
    target.write_text("old\n")
    places = [tmp_path / "work"]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        places.append(Path(tempfile.mkdtemp(dir=shm)))
    try:
        for i, folder in enumerate(places):
            folder.mkdir(exist_ok=True)
            src = folder / "db.yaml"
            src.write_text(f"new {i}\n")
            atomic_move(str(src), str(target), 0o644)
            assert target.read_text() == f"new {i}\n"
            assert stat.S_IMODE(target.stat().st_mode) == 0o644
            assert sorted(os.listdir(tmp_path)) == ["db.yaml", "work"]  # nothing left beside it
    finally:
        for folder in places[1:]:
            shutil.rmtree(folder)


# --- c. the swap


def test_the_swap_exchanges_old_and_new_in_one_step(tmp_path, cli, monkeypatch) -> None:
    one = write_tree(tmp_path / "one", _fleet_files("first", "a"))
    two = write_tree(tmp_path / "two", _fleet_files("second", "b"))
    out = tmp_path / "builds" / "b"
    assert _compile(cli, one, out).code == 0
    old_inode = out.stat().st_ino

    def no_fallback(*args: object) -> None:
        raise AssertionError("the exchange should have been used")

    replaced: list[tuple[list[str], list[int]]] = []
    monkeypatch.setattr(build, "_rename_pair", no_fallback)
    monkeypatch.setattr(build, "_remove_later", lambda p, fds: replaced.append((p, fds)))
    assert _compile(cli, two, out).code == 0
    assert json.loads((out / "manifest.json").read_text())["fleet"] == "second"
    [(paths, fds)] = replaced
    [aside] = paths
    assert os.path.dirname(aside) == str(_work(two))
    assert os.stat(aside).st_ino == old_inode
    assert json.loads(Path(aside, "manifest.json").read_text())["fleet"] == "first"
    monkeypatch.undo()
    build._remove_later(paths, fds)
    _wait_gone(Path(aside))


def test_without_exchange_the_renames_hold_the_signals(tmp_path, cli, monkeypatch, small) -> None:
    out = tmp_path / "builds" / "b"
    assert _compile(cli, small, out).code == 0

    def unsupported(a: str, b: str) -> None:
        raise OSError(errno.EINVAL, "not supported here")

    masks: list[set[signal.Signals]] = []
    real_rename = os.rename

    def rename(a: str, b: str) -> None:
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        real_rename(a, b)

    monkeypatch.setattr(build, "_exchange", unsupported)
    monkeypatch.setattr(build.os, "rename", rename)
    assert _compile(cli, small, out).code == 0
    monkeypatch.undo()
    assert len(masks) == 2 and all(m >= build.SWAP_SIGNALS for m in masks)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert (out / build.BUILD_MARKER).is_file()
    _wait_tool_dir_empty(_work(small))


def test_without_exchange_a_failed_rename_puts_the_old_build_back(tmp_path, monkeypatch) -> None:
    old = write_tree(tmp_path / "b", {"site.yml": "old\n"})
    new = write_tree(tmp_path / "new", {"site.yml": "new\n"})
    real_rename = os.rename
    calls: list[str] = []

    def rename(a: str, b: str) -> None:
        calls.append(a)
        if a == str(new):
            raise OSError(errno.EXDEV, "cross-device")
        real_rename(a, b)

    monkeypatch.setattr(build.os, "rename", rename)
    with pytest.raises(OSError):
        build._rename_pair(str(new), str(old), str(tmp_path / "aside"))
    monkeypatch.undo()
    assert (old / "site.yml").read_text() == "old\n" and not (tmp_path / "aside").exists()


def test_first_compile_is_a_plain_rename(tmp_path, monkeypatch) -> None:
    new = write_tree(tmp_path / "new", {"x": "1\n"})
    monkeypatch.setattr(build, "_exchange", lambda a, b: pytest.fail("nothing to exchange"))
    build._swap_in(str(new), str(tmp_path / "b"), str(tmp_path))
    assert (tmp_path / "b" / "x").read_text() == "1\n" and not new.exists()


# --- d. every path the writer writes stays in its folder


@pytest.mark.parametrize(
    "name,why",
    [
        ("/etc/orchestrate-test", "absolute"),
        ("../escape", "'..' segment"),
        ("roles/../../escape", "'..' segment"),
        ("roles//main.yml", "empty segment"),
        ("roles/", "empty segment"),
        ("", "empty"),
        ("./x", "'.' segment"),
        ("a\0b", "NUL byte"),
        ("inventory.json/x", "both a file and the folder"),
    ],
)
def test_the_writer_refuses_names_outside_its_folder(tmp_path: Path, name: str, why: str) -> None:
    out = tmp_path / "builds" / "b"
    outputs = {"inventory.json": b"{}\n", "roles/r/tasks/main.yml": b"[]\n", name: b"evil\n"}
    with pytest.raises(build.UnsafeOutputs) as caught:
        build._write_atomically(outputs, str(out), str(tmp_path / "fleet"))
    assert isinstance(caught.value, UsageError)
    assert repr(name if why != "both a file and the folder" else "inventory.json") in str(
        caught.value
    )
    assert why in str(caught.value)
    assert os.listdir(tmp_path) == []  # nothing written, not even the folders
    assert not os.path.exists("/etc/orchestrate-test")


def test_the_writer_checks_where_a_folder_resolves(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "roles").symlink_to(outside)
    with pytest.raises(build.UnsafeOutputs, match=r"'roles/x' .*resolves outside"):
        build._write_tree(str(tmp), {"roles/x": b"evil\n"})
    assert os.listdir(outside) == []


# --- e. files the user names


def _plan(root: Path, out: Path | str) -> subprocess.CompletedProcess[str]:
    return orchestrate(root, "plan", "--offline", "-o", str(out), timeout=120)


def test_plan_out_writes_through_a_symlink(small, tmp_path) -> None:
    real = write_tree(tmp_path / "real", {"plan.json": "old\n"}) / "plan.json"
    link = tmp_path / "link.json"
    link.symlink_to("real/plan.json")
    r = _plan(small, link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == "real/plan.json"
    saved = json.loads(real.read_text())
    assert set(saved["hosts"]) == {"a"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert os.listdir(real.parent) == ["plan.json"]  # no temporary left beside it


def test_plan_out_a_dangling_symlink_creates_its_target(small, tmp_path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to("made-by-plan.json")
    assert _plan(small, link).returncode == 0
    assert link.is_symlink() and "hosts" in json.loads((tmp_path / "made-by-plan.json").read_text())


def _plan_refused(small: Path, tmp_path: Path, out: Path | str, what: str) -> None:
    before = _tree(small)
    started = time.monotonic()
    r = _plan(small, out)
    assert time.monotonic() - started < 60
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{out} is {what}" in r.stderr, r.stderr
    assert _tree(small) == before  # refused before anything ran: no build, no lock


def test_plan_out_refuses_a_character_device(small, tmp_path) -> None:
    st = os.lstat("/dev/null")
    _plan_refused(small, tmp_path, "/dev/null", "a character device")
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (st.st_ino, st.st_rdev)
    assert not [n for n in os.listdir("/dev") if n.startswith(".null.")]


def test_plan_out_refuses_a_symlink_to_a_device(small, tmp_path) -> None:
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    _plan_refused(small, tmp_path, link, "a character device")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"


def test_plan_out_refuses_a_fifo_without_hanging(small, tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _plan_refused(small, tmp_path, fifo, "a FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_plan_out_refuses_a_folder(small, tmp_path) -> None:
    folder = write_tree(tmp_path / "plans", {"keep.txt": "mine\n"})
    before = _tree(folder)
    _plan_refused(small, tmp_path, folder, "a folder")
    assert _tree(folder) == before


def test_write_user_file_refuses_a_socket(tmp_path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(UsageError, match="is a socket"):
            write_user_file(str(path), b"x")
        assert stat.S_ISSOCK(path.lstat().st_mode)


def test_write_user_file_follows_a_chain_of_links(tmp_path) -> None:
    target = write_tree(tmp_path / "dotfiles", {"keys.txt": "old\n"}) / "keys.txt"
    (tmp_path / "one").symlink_to(target)
    (tmp_path / "two").symlink_to("one")
    assert write_user_file(str(tmp_path / "two"), b"new\n", 0o640) == str(target)
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert (tmp_path / "two").is_symlink() and (tmp_path / "one").is_symlink()


def test_write_user_file_in_a_missing_folder(tmp_path) -> None:
    with pytest.raises(UsageError, match="cannot write it"):
        write_user_file(str(tmp_path / "nowhere" / "f"), b"x")
    write_user_file(str(tmp_path / "made" / "f"), b"x", folders=True)
    assert (tmp_path / "made" / "f").read_bytes() == b"x"


def test_keygen_key_file_through_a_symlink(tmp_path, cli) -> None:
    root = write_tree(tmp_path / "fleet", _fleet_files())
    real = write_tree(tmp_path / "dotfiles", {"age.txt": "# earlier key\n"}) / "age.txt"
    link = tmp_path / "keys.txt"
    link.symlink_to(real)
    r = cli("--fleet", str(root), "secrets", "keygen", "--key-file", str(link))
    assert r.code == 0, r.err
    assert link.is_symlink()
    text = real.read_text()
    assert text.startswith("# earlier key\n") and "AGE-SECRET-KEY-" in text


def test_schedule_textfile_through_a_symlink_and_not_into_a_fifo(tmp_path) -> None:
    from orchestrator.schedule.cron import Schedule, _textfile

    root = write_tree(tmp_path / "fleet", _fleet_files("sched"))
    prom = tmp_path / "node-exporter"
    prom.mkdir()
    real = write_tree(tmp_path / "real", {"x.prom": ""}) / "x.prom"
    (prom / "orchestrate_sched_n.prom").symlink_to(real)
    rec = {"started": 1, "duration": 0.5, "exit": 0}
    _textfile(str(root), Schedule("n", "* * * * *", "plan", [], str(prom)), rec)
    assert (prom / "orchestrate_sched_n.prom").is_symlink()
    assert "orchestrate_last_run_exit_code" in real.read_text()
    os.mkfifo(prom / "orchestrate_sched_f.prom")
    with pytest.raises(UsageError, match="is a FIFO"):
        _textfile(str(root), Schedule("f", "* * * * *", "plan", [], str(prom)), rec)


def test_image_boot_console_log_is_checked_before_booting(tmp_path) -> None:
    from orchestrator.images.boot import boot

    fifo = tmp_path / "console"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="is a FIFO"):
        boot(str(tmp_path / "none.qcow2"), "h", 22, 1, lambda m: None, keep_log=str(fifo))


# --- f. the debug log


def _crash(monkeypatch: pytest.MonkeyPatch, cli, state: Path | None) -> Run:
    if state is not None:
        monkeypatch.setenv("XDG_STATE_HOME", str(state))

    def broken(args: object) -> int:
        raise RuntimeError("boom in a handler")

    monkeypatch.setattr(cli_module, "_compile", broken)
    return cli("compile")


def _log_of(r: Run) -> Path:
    assert r.code == 70
    assert "Traceback" not in r.err
    m = re.fullmatch(r"internal error in orchestrate \S+; the traceback is in (\S+)\n", r.err)
    assert m, r.err
    return Path(m[1])


def test_an_internal_error_goes_to_a_new_private_file(tmp_path, monkeypatch, cli) -> None:
    state = tmp_path / "state"
    log = _log_of(_crash(monkeypatch, cli, state))
    assert log.parent == state / "orchestrate"
    assert stat.S_IMODE(log.parent.lstat().st_mode) == 0o700
    assert stat.S_IMODE(log.lstat().st_mode) == 0o600 and stat.S_ISREG(log.lstat().st_mode)
    assert "RuntimeError: boom in a handler" in log.read_text()
    second = _log_of(cli("compile"))
    assert (
        second != log and log.read_text().count("RuntimeError: boom") == 1
    )  # a new file, not appended


def test_a_planted_symlink_at_the_log_name_is_not_followed(tmp_path, monkeypatch, cli) -> None:
    folder = tmp_path / "state" / "orchestrate"
    folder.mkdir(parents=True, mode=0o755)
    os.chmod(folder, 0o755)
    victim = write_tree(tmp_path, {"victim": "precious\n"}) / "victim"
    now = time.time()
    planted = []
    for t in range(-1, 6):
        stamp = time.strftime("crash-%Y%m%d-%H%M%S", time.localtime(now + t))
        planted.append(folder / f"{stamp}-{os.getpid()}.log")
        planted[-1].symlink_to(victim)
    log = _log_of(_crash(monkeypatch, cli, tmp_path / "state"))
    assert victim.read_text() == "precious\n"
    assert all(p.is_symlink() for p in planted) and log not in planted
    assert stat.S_IMODE(log.lstat().st_mode) == 0o600 and not log.is_symlink()
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700  # a loose folder is made private


def test_a_symlinked_state_folder_is_refused_but_the_exit_is_still_70(
    tmp_path, monkeypatch, cli
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "orchestrate").symlink_to(elsewhere)
    r = _crash(monkeypatch, cli, tmp_path / "state")
    assert r.code == 70 and "Traceback" not in r.err
    assert "RuntimeError: boom in a handler" in r.err and "could not be kept" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert os.listdir(elsewhere) == []


def test_without_xdg_state_home_the_log_is_under_home(tmp_path, monkeypatch, cli) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    log = _log_of(_crash(monkeypatch, cli, None))
    assert log.parent == tmp_path / ".local" / "state" / "orchestrate"
