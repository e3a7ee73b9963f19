"""Scheduled runs: real crontab entries, a real cron daemon firing one, no overlap with another
run of the fleet, a JSON line per run and a Prometheus textfile."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Run

FLEET = {
    "fleet.yaml": "name: sched\nbuilders: {x: {arch: x86_64}}\nhosts:\n  a: {builder: x}\n",
}


def crontab() -> str:
    r = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    return r.stdout if r.returncode == 0 else ""


@pytest.fixture
def clean_crontab() -> Iterator[None]:
    before = crontab()
    yield
    subprocess.run(["crontab", "-"], input=before, text=True, check=True)


def test_add_list_run_remove(
    fleet, cli: Callable[..., Run], clean_crontab: None, tmp_path: Path
) -> None:
    root = fleet(FLEET)
    prom_dir = tmp_path / "textfiles"
    r = cli(
        "--fleet",
        str(root),
        "schedule",
        "add",
        "drift",
        "--cron",
        "*/20 * * * *",
        "--textfile-dir",
        str(prom_dir),
        "--",
        "plan",
        "--offline",
    )
    assert r.code == 0, r.err
    line = next(x for x in crontab().splitlines() if f"orchestrate:{root}:drift" in x)
    assert line.startswith("*/20 * * * * ") and "schedule run drift" in line
    listed = cli("--fleet", str(root), "schedule", "list").out
    assert "drift\t*/20 * * * *\tplan --offline\tnever run" in listed
    run = cli("--fleet", str(root), "schedule", "run", "drift")
    assert run.code == 2  # never applied: the plan finds drift
    rec = json.loads((root / ".orchestrate/schedule/runs.jsonl").read_text().splitlines()[-1])
    assert rec["schedule"] == "drift" and rec["drift"] is True and rec["changed"] == ["a"]
    prom = (prom_dir / "orchestrate_sched_drift.prom").read_text()
    assert 'orchestrate_last_run_drift{fleet="sched",schedule="drift",mode="plan"} 1' in prom
    assert (
        'orchestrate_last_run_hosts_changed{fleet="sched",schedule="drift",mode="plan"} 1' in prom
    )
    assert "# TYPE orchestrate_last_run_duration_seconds gauge" in prom
    assert cli("--fleet", str(root), "schedule", "remove", "drift").code == 0
    assert f"orchestrate:{root}:drift" not in crontab()


def test_bad_schedules_are_refused(fleet, cli: Callable[..., Run], clean_crontab: None) -> None:
    root = fleet(FLEET)
    before = crontab()
    bad_cron = cli(
        "--fleet", str(root), "schedule", "add", "x", "--cron", "61 * * * *", "--", "plan"
    )
    assert bad_cron.code == 1 and "not a valid cron expression" in bad_cron.err
    bad_cmd = cli(
        "--fleet", str(root), "schedule", "add", "x", "--cron", "* * * * *", "--", "compile"
    )
    assert bad_cmd.code == 1 and "plan ...` or `apply" in bad_cmd.err
    bad_args = cli(
        "--fleet", str(root), "schedule", "add", "x", "--cron", "* * * * *", "--", "plan", "--bogus"
    )
    assert bad_args.code == 1 and "invalid arguments" in bad_args.err
    assert crontab() == before


def test_scheduled_run_never_overlaps(fleet, cli: Callable[..., Run], clean_crontab: None) -> None:
    from orchestrator.executor.lock import FleetLock

    root = fleet(FLEET)
    assert (
        cli(
            "--fleet",
            str(root),
            "schedule",
            "add",
            "d",
            "--cron",
            "0 * * * *",
            "--",
            "plan",
            "--offline",
        ).code
        == 0
    )
    with FleetLock(str(root / ".orchestrate"), "apply"):
        r = cli("--fleet", str(root), "schedule", "run", "d")
    assert r.code == 4
    rec = json.loads(r.out)
    assert "another run holds the fleet's lock" in rec["skipped"]
    prom = (root / ".orchestrate/schedule/orchestrate_sched_d.prom").read_text()
    assert 'orchestrate_last_run_exit_code{fleet="sched",schedule="d",mode="plan"} 4' in prom


@pytest.mark.cron
def test_cron_daemon_runs_the_entry(fleet, cli: Callable[..., Run], clean_crontab: None) -> None:
    root = fleet(FLEET)
    assert (
        cli(
            "--fleet",
            str(root),
            "schedule",
            "add",
            "every-minute",
            "--cron",
            "* * * * *",
            "--",
            "plan",
            "--offline",
        ).code
        == 0
    )
    started = subprocess.run(["pgrep", "-x", "cron"], capture_output=True, check=False)
    daemon = None
    if started.returncode != 0:
        daemon = subprocess.Popen(["cron", "-f"])
    try:
        log = root / ".orchestrate/schedule/runs.jsonl"
        deadline = time.monotonic() + 130
        while time.monotonic() < deadline and not log.exists():
            time.sleep(2)
        assert log.exists(), (root / ".orchestrate/schedule/every-minute.cron.log").read_text()
        assert json.loads(log.read_text().splitlines()[0])["schedule"] == "every-minute"
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait()
