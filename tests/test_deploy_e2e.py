"""plan and apply against real container hosts over SSH (podman testbed), no mocks of Ansible.

Ten hosts share one module whose tasks write files, can pause (to act mid-run) and can fail on
purpose; each test edits the fleet and runs the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import orchestrate, write_tree

pytestmark = pytest.mark.containers

HOSTS = [f"tb-{i}" for i in range(10)]
MODULE = """
options:
  tb.message: {type: string, default: hello}
  tb.pause: {type: integer, default: 0}
  tb.fail: {type: boolean, default: false}
tasks:
  - name: Make the folder
    ansible.builtin.file: {path: /etc/orchestrate-tb, state: directory, mode: "0755"}
  - name: Write the message
    ansible.builtin.copy:
      dest: /etc/orchestrate-tb/message
      content: "{{ config.tb.message }}\\n"
      mode: "0644"
  - name: Wait a while
    ansible.builtin.wait_for: {timeout: "{{ config.tb.pause }}"}
    when: config.tb.pause > 0 and not ansible_check_mode
  - name: Fail on purpose
    ansible.builtin.fail: {msg: failing as configured}
    when: config.tb.fail
  - name: Write the second file
    ansible.builtin.copy: {dest: /etc/orchestrate-tb/second, content: "done\\n", mode: "0644"}
  - name: List the folder
    ansible.builtin.command: ls /etc/orchestrate-tb
    changed_when: false
"""


def _fleet_yaml(extra: str = "") -> str:
    hosts = "".join(f"  {h}: {{builder: x86_64, modules: [hosts/{h}.yaml]}}\n" for h in HOSTS)
    return (
        "name: tbtest\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [tb.yaml]\nhosts:\n"
        + hosts
        + extra
    )


def spawn(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def host_file(host: str, path: str) -> str | None:
    r = subprocess.run(
        ["podman", "exec", _container(host), "cat", path],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CONTAINERS_CONF": _conf()},
    )
    return r.stdout if r.returncode == 0 else None


def podman_exec(host: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "exec", _container(host), *cmd],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CONTAINERS_CONF": _conf()},
    )


CONTAINERS: dict[str, str] = {}


def _container(host: str) -> str:
    return CONTAINERS[host]


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CONTAINERS_CONF": _conf()},
    )


def _conf() -> str:
    import orchestrator.testbed.images as images

    return os.path.join(images.HERE, "containers.conf")


def tree(host: str) -> str:
    """A fingerprint of the host's files (paths, sizes, modes, mtimes), minus volatile places."""
    script = (
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path "
        "/tmp -o -path /var/tmp -o -path /root/.ansible \\) -prune -o "
        "-printf '%p %s %m %T@\\n' | sort"
    )
    r = podman_exec(host, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout


def set_host(root: Path, host: str, **values: object) -> None:
    body = "config:\n" + "".join(f"  tb.{k}: {json.dumps(v)}\n" for k, v in values.items())
    (root / "hosts" / f"{host}.yaml").write_text(body if values else "config: {}\n")


# what Ansible prints when a play runs on a strategy it does not ship (Mitogen's)
THIRD_PARTY = "strategy plugins not included in ansible.builtin"


def _stdout(root: Path) -> str:
    """Ansible's own output of the latest run, as its run record keeps it."""
    run = sorted((root / ".orchestrate" / "runs").iterdir())[-1]
    return (run / "artifacts" / "artifacts" / "stdout").read_text()


def summary(root: Path) -> dict[str, object]:
    runs = sorted((root / ".orchestrate" / "runs").glob("*-apply*"))
    return json.loads((runs[-1] / "summary.json").read_text())


def start_testbed(root: Path) -> None:
    """`testbed up` for the fleet at ``root``; its containers become known to the helpers."""
    up = orchestrate(root, "testbed", "up", timeout=1800)
    assert up.returncode == 0, up.stderr
    record = json.loads((root / ".orchestrate" / "testbed.json").read_text())
    CONTAINERS.update({h: v["container"] for h, v in record["hosts"].items()})


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tbfleet")
    files = {"fleet.yaml": _fleet_yaml(), "tb.yaml": MODULE}
    files.update({f"hosts/{h}.yaml": "config: {}\n" for h in HOSTS})
    write_tree(root, files)
    start_testbed(root)
    yield root
    orchestrate(root, "testbed", "down")


# hosts a test changed by hand (beyond what the fleet says): the next `fresh` converges them
TOUCHED: set[str] = set()
DEFAULTS = {"message": "hello", "pause": 0, "fail": False}


def touched(*hosts: str) -> None:
    TOUCHED.update(hosts)


def _dirty(root: Path, since: float) -> set[str]:
    """Hosts that may differ from the module's defaults: those whose last apply recorded other
    values, those of any apply since ``since`` that failed or was cut short (their files may be
    half-written), and those a test changed by hand."""
    dirty = set(TOUCHED)
    for h in HOSTS:
        state = root / ".orchestrate" / "state" / f"{h}.json"
        if not state.exists() or json.loads(state.read_text())["config"].get("tb") != DEFAULTS:
            dirty.add(h)
    for run in (root / ".orchestrate" / "runs").glob("*-apply*"):
        record = run / "summary.json"
        if run.stat().st_mtime < since:
            continue
        if not record.exists():
            dirty.update(HOSTS)  # killed before it could write its summary
            continue
        doc = json.loads(record.read_text())
        if doc["interrupted"]:
            dirty.update(doc["hosts"])
        dirty.update(doc["failed_hosts"])
    return dirty


@pytest.fixture
def fresh(tb: Path) -> Iterator[Path]:
    """Every host back to the module's defaults and converged: only the hosts the tests before
    changed are applied again (a full apply of ten hosts per test is most of this file's time)."""
    for h in HOSTS:
        set_host(tb, h)
    dirty = _dirty(tb, FRESH_SINCE[0])
    if dirty:
        r = orchestrate(tb, "apply", "--yes", "--limit", ",".join(sorted(dirty)))
        assert r.returncode == 0, r.stdout + r.stderr
        assert _dirty(tb, time.time()) <= TOUCHED
    TOUCHED.clear()
    FRESH_SINCE[0] = time.time()
    yield tb


FRESH_SINCE = [0.0]


def test_first_apply_changes_then_second_changes_nothing(tb: Path) -> None:
    for h in HOSTS:
        set_host(tb, h, message=f"first-{h}")
    first = orchestrate(tb, "apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    s = summary(tb)
    assert all(s["hosts"][h]["changed"] >= 1 for h in HOSTS)  # type: ignore[index]
    assert host_file("tb-4", "/etc/orchestrate-tb/message") == "first-tb-4\n"
    # the first ran on Mitogen (the default), which Ansible warns of as a strategy of its own
    assert s["strategy"] == "mitogen" and THIRD_PARTY in _stdout(tb)
    # Ansible's own strategy, the fallback, finds the same hosts converged
    second = orchestrate(tb, "apply", "--yes", "--json", "--strategy", "ansible")
    assert second.returncode == 0
    s = summary(tb)
    assert all(s["hosts"][h]["changed"] == 0 for h in HOSTS), s  # type: ignore[index]
    assert s["strategy"] == "ansible" and THIRD_PARTY not in _stdout(tb)
    assert "testbed: reaching 10 host(s)" in second.stderr
    # --json: the final table as a document on stdout, the live display stays on stderr
    doc = json.loads(second.stdout)
    assert doc["format"] == "orchestrate.apply/1" and doc["failed_hosts"] == []
    assert sorted(doc["hosts"]) == HOSTS and doc["interrupted"] is False
    assert all(doc["hosts"][h]["changed"] == 0 and doc["hosts"][h]["ok"] > 0 for h in HOSTS)
    assert all(doc["hosts"][h]["success"] for h in HOSTS) and doc["failures"] == []


def test_plan_after_edit_lists_exactly_the_edited_paths(fresh: Path) -> None:
    set_host(fresh, "tb-2", message="edited")
    r = orchestrate(fresh, "plan", "--json", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr
    plan = json.loads(r.stdout)
    changed = {h: p["config_changes"] for h, p in plan["hosts"].items() if p["config_changes"]}
    assert changed == {"tb-2": [{"path": "tb.message", "old": "hello", "new": "edited"}]}
    would = {h for h, p in plan["hosts"].items() if p["check"]["changed"]}
    assert would == {"tb-2"}
    for p in plan["hosts"].values():  # a command without creates/removes cannot be previewed
        assert [t["task"] for t in p["check"]["not_previewable"]] == ["List the folder"]
    task = plan["hosts"]["tb-2"]["check"]["changed"][0]
    assert task["task"] == "Write the message"
    assert any("edited" in str(d.get("after")) for d in task["diff"])


def test_drift_by_hand_shows_in_plan(fresh: Path) -> None:
    touched("tb-6")
    podman_exec("tb-6", "sh", "-c", "echo tampered > /etc/orchestrate-tb/message")
    r = orchestrate(fresh, "plan", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert {h for h, p in plan["hosts"].items() if p["check"]["changed"]} == {"tb-6"}
    assert all(not p["config_changes"] for p in plan["hosts"].values())
    text = orchestrate(fresh, "plan", "--limit", "tb-6").stdout
    assert "would change: Write the message" in text and "-tampered" in text


def test_plan_changes_nothing_on_hosts(fresh: Path) -> None:
    for h in HOSTS[:3]:
        set_host(fresh, h, message="not-applied")
    before = {h: tree(h) for h in HOSTS}
    r = orchestrate(fresh, "plan")
    assert r.returncode == 0, r.stderr
    assert {h: tree(h) for h in HOSTS} == before
    assert host_file("tb-0", "/etc/orchestrate-tb/message") == "hello\n"


def test_failing_task_on_one_host(fresh: Path) -> None:
    state = fresh / ".orchestrate" / "state" / "tb-5.json"
    before = state.read_bytes()
    set_host(fresh, "tb-5", fail=True, message="x")
    set_host(fresh, "tb-1", message="y")
    r = orchestrate(fresh, "apply", "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "failed or unreachable: tb-5" in r.stderr
    s = summary(fresh)
    assert s["failed_hosts"] == ["tb-5"]
    assert state.read_bytes() == before  # its state untouched
    assert (
        json.loads((fresh / ".orchestrate/state/tb-1.json").read_text())["config"]["tb"]["message"]
        == "y"
    )


def test_saved_plan_is_refused_after_an_edit(fresh: Path, tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    r = orchestrate(fresh, "plan", "--offline", "-o", str(saved))
    assert r.returncode == 0, r.stderr
    set_host(fresh, "tb-0", message="after-plan")
    refused = orchestrate(fresh, "apply", str(saved))
    assert refused.returncode == 1
    assert "changed since the plan" in refused.stderr and "hosts/tb-0.yaml" in refused.stderr
    assert not any(
        p.name.endswith("apply") and p.stat().st_mtime > saved.stat().st_mtime
        for p in (fresh / ".orchestrate" / "runs").iterdir()
    )
    set_host(fresh, "tb-0")
    accepted = orchestrate(fresh, "apply", str(saved))
    assert accepted.returncode == 0, accepted.stderr


def _wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def test_second_concurrent_apply_gets_exit_4(fresh: Path) -> None:
    for h in HOSTS:
        set_host(fresh, h, pause=8)
    first = spawn(fresh, "apply", "--yes")
    try:
        lock = fresh / ".orchestrate" / "lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip() != "")
        second = orchestrate(fresh, "apply", "--yes")
        assert second.returncode == 4, second.stderr
        assert "another run holds the fleet's lock" in second.stderr
    finally:
        first.communicate(timeout=300)
    assert first.returncode == 0


def test_sshd_stopped_on_one_host_mid_run(fresh: Path) -> None:
    victim = "tb-7"
    state = fresh / ".orchestrate" / "state" / f"{victim}.json"
    before = state.read_bytes()
    for h in HOSTS:
        set_host(fresh, h, pause=6, message="mid-run")
    touched(victim)
    podman_exec(victim, "rm", "-f", "/etc/orchestrate-tb/second")
    proc = spawn(fresh, "apply", "--yes")
    _wait_for(lambda: host_file(victim, "/etc/orchestrate-tb/message") == "mid-run\n", 120)
    # sshd is the container's PID 1, which SIGKILL cannot stop from inside: kill it from
    # outside, which takes the running connection and the listener down together
    podman("kill", _container(victim))
    out, err = proc.communicate(timeout=300)
    try:
        assert proc.returncode == 3, out + err
        s = summary(fresh)
        assert s["failed_hosts"] == [victim]
        hosts = s["hosts"]
        assert hosts[victim]["unreachable"] >= 1  # type: ignore[index]
        others = [h for h in HOSTS if h != victim]
        assert all(host_file(h, "/etc/orchestrate-tb/second") == "done\n" for h in others)
        assert state.read_bytes() == before
    finally:
        from orchestrator.testbed.manager import answers, load_record

        podman("start", _container(victim))
        record = load_record(str(fresh / ".orchestrate"))[victim]
        _wait_for(lambda: answers(record))


def test_kill_9_leaves_no_corrupt_state_and_next_apply_converges(fresh: Path) -> None:
    for h in HOSTS:
        set_host(fresh, h, pause=5, message="killed-run")
    proc = spawn(fresh, "apply", "--yes")
    _wait_for(lambda: host_file("tb-0", "/etc/orchestrate-tb/message") == "killed-run\n", 120)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    for f in (fresh / ".orchestrate" / "state").glob("*"):
        assert f.suffix == ".json", f"leftover {f.name}"
        json.loads(f.read_text())  # every state file still parses
    for h in HOSTS:
        set_host(fresh, h, message="killed-run")
    r = orchestrate(fresh, "apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    again = orchestrate(fresh, "apply", "--yes")
    assert again.returncode == 0
    assert all(v["changed"] == 0 for v in summary(fresh)["hosts"].values())  # type: ignore[union-attr]


def test_serial_batches_stop_at_max_fail_percent(fresh: Path) -> None:
    for h in HOSTS:
        set_host(fresh, h, message="batched")
    set_host(fresh, "tb-4", message="batched", fail=True)
    r = orchestrate(fresh, "apply", "--yes", "--serial", "3", "--max-fail-percent", "0")
    assert r.returncode == 3, r.stdout + r.stderr
    # batches [0-2] [3-5] [6-8] [9]: the second fails, so the play stops before the third;
    # the failed host is rolled back to what it ran before (--on-failure rollback)
    assert all(
        host_file(h, "/etc/orchestrate-tb/message") == "batched\n"
        for h in ("tb-0", "tb-1", "tb-2", "tb-3", "tb-5")
    )
    assert host_file("tb-4", "/etc/orchestrate-tb/message") == "hello\n"
    assert "tb-4: rolled back: a task failed" in r.stderr
    assert all(
        host_file(h, "/etc/orchestrate-tb/message") == "hello\n"
        for h in ("tb-6", "tb-7", "tb-8", "tb-9")
    )
    state = json.loads((fresh / ".orchestrate/state/tb-8.json").read_text())
    assert state["config"]["tb"]["message"] == "hello"


def test_limit_by_group_and_name(fresh: Path) -> None:
    for h in HOSTS:
        set_host(fresh, h, message="limited")
    r = orchestrate(fresh, "apply", "--limit", "tb-1,tb-2")
    assert r.returncode == 0, r.stderr  # a subset needs no confirmation
    assert sorted(summary(fresh)["hosts"]) == ["tb-1", "tb-2"]  # type: ignore[arg-type]
    assert host_file("tb-3", "/etc/orchestrate-tb/message") == "hello\n"
    everyone = orchestrate(fresh, "apply")
    assert everyone.returncode == 1
    assert "needs --yes" in everyone.stderr
    bad = orchestrate(fresh, "apply", "--limit", "@nosuchgroup")
    assert bad.returncode == 1 and "no host or group named '@nosuchgroup'" in bad.stderr


def test_ctrl_c_stops_cleanly_and_keeps_records(fresh: Path) -> None:
    states = {p.name: p.read_bytes() for p in (fresh / ".orchestrate/state").iterdir()}
    for h in HOSTS:
        set_host(fresh, h, pause=20, message="interrupted")
    proc = spawn(fresh, "apply", "--yes")
    _wait_for(lambda: host_file("tb-0", "/etc/orchestrate-tb/message") == "interrupted\n", 120)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - started < 20, "did not stop promptly"
    assert proc.returncode == 130, out + err
    assert "interrupted; the run record is in" in err
    s = summary(fresh)
    assert s["interrupted"] is True
    assert {p.name: p.read_bytes() for p in (fresh / ".orchestrate/state").iterdir()} == states
    assert (fresh / ".orchestrate/lock").read_text() == ""  # released
    for h in HOSTS:
        set_host(fresh, h)
    assert orchestrate(fresh, "apply", "--yes").returncode == 0


def test_scheduled_apply(fresh: Path) -> None:
    set_host(fresh, "tb-9", message="from-cron")
    add = orchestrate(
        fresh,
        "schedule",
        "add",
        "converge",
        "--cron",
        "0 4 * * *",
        "--",
        "apply",
        "--limit",
        "tb-8,tb-9",
    )
    assert add.returncode == 0, add.stderr
    try:
        r = orchestrate(fresh, "schedule", "run", "converge")
        assert r.returncode == 0, r.stdout + r.stderr
        rec = json.loads(r.stdout)
        assert rec["changed"] == ["tb-9"] and rec["failed"] == [] and rec["unreachable"] == []
        assert host_file("tb-9", "/etc/orchestrate-tb/message") == "from-cron\n"
        prom = (fresh / ".orchestrate/schedule/orchestrate_tbtest_converge.prom").read_text()
        assert (
            'orchestrate_last_run_hosts_changed{fleet="tbtest",schedule="converge",'
            'mode="apply"} 1' in prom
        )
    finally:
        orchestrate(fresh, "schedule", "remove", "converge")


def test_testbed_up_steps_over_a_port_forward_a_killed_container_left(tmp_path: Path) -> None:
    """A session stopped hard kills podman's monitors but leaves their port forwards in the NAT
    table, on ports nothing listens on: a new container published there is never reached."""
    from orchestrator.testbed.images import ssh_image
    from orchestrator.testbed.manager import free_ports

    port = next(free_ports(set()))
    stale = f"orch-stale-{os.getpid()}"
    image = ssh_image("x86_64", "bookworm", lambda _: None)
    run = podman("run", "-d", "--name", stale, "-p", f"127.0.0.1:{port}:22", image, "sleep", "600")
    assert run.returncode == 0, run.stderr
    try:
        pids = podman("inspect", "-f", "{{.State.ConmonPid}} {{.State.Pid}}", stale).stdout.split()
        subprocess.run(["kill", "-9", *pids], check=True)
        time.sleep(1)
        assert (
            f"--dport {port} "
            in subprocess.run(
                ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True
            ).stdout
        )
        root = tmp_path / "one"
        fleet = "name: one\nbuilders: {x86_64: {arch: x86_64}}\nhosts: {solo: {builder: x86_64}}\n"
        write_tree(root, {"fleet.yaml": fleet})
        up = orchestrate(root, "testbed", "up", timeout=600)
        assert up.returncode == 0, up.stderr
        record = json.loads((root / ".orchestrate" / "testbed.json").read_text())
        assert record["hosts"]["solo"]["port"] != port
        orchestrate(root, "testbed", "down")
    finally:
        podman("rm", "-f", stale)
