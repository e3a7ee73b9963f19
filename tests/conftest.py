"""Shared fixtures: write small fleets into temporary folders and run the real CLI on them."""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # the tests write nothing into the checkout, bytecode neither

import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from orchestrator.cli import main  # noqa: E402

os.environ["PYTHONDONTWRITEBYTECODE"] = "1"  # nor do the commands they start
REPO = Path(__file__).resolve().parent.parent
# The bundled fleet, as the tests use it: a copy, so that what they compile and record lands
# there and never in the checkout's inventory/.orchestrate.
_SANDBOX = Path(tempfile.mkdtemp(prefix="orchestrate-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, True)
BUNDLED = _SANDBOX / "inventory"
shutil.copytree(
    REPO / "inventory", BUNDLED, symlinks=True, ignore=shutil.ignore_patterns(".orchestrate")
)
# the end-to-end lane: real container hosts, images, cron, the wheel, or long real Ansible runs
E2E_MARKERS = {"containers", "images", "cron", "install"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from what the compiler writes now (review the diff after)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_MARKERS & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.e2e)


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Seconds per test file (setup, call and teardown summed): what BENCHMARKS.md's table of
    the suite's cost is made from."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")


def orchestrate(root: Path, *args: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process, on the fleet in ``root``."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Run:
    code: int
    out: str
    err: str


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def fleet(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    def make(files: dict[str, str]) -> Path:
        return write_tree(tmp_path / "fleet", files)

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    def run(*args: str, cwd: Path | None = None) -> Run:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below folder, by relative path (to prove nothing was written). A replaced
    build on its way out (`old-*` in the compiler's `.orchestrate-tmp`, removed in the
    background) is left out: it is what a compile let go of, and vanishes while it is read."""
    out = {}
    for base, dirs, names in os.walk(folder):
        if os.path.basename(base) == ".orchestrate-tmp":
            dirs[:] = [d for d in dirs if not d.startswith("old-")]
        for n in names:
            p = Path(base) / n
            if p.is_symlink() or not p.is_file():  # links, FIFOs, devices: what they are
                out[str(p.relative_to(folder))] = f"<{oct(p.lstat().st_mode)}>".encode()
            else:
                out[str(p.relative_to(folder))] = p.read_bytes()
    return out
