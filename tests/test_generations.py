"""Generations on a host, without a host: the core that runs there (the role
orchestrate_generations' module_utils) pointed at a folder that stands for the root. What an
apply changed is recorded, undone, refused when tampered with; the real thing over SSH is in
test_rollout_e2e.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, orchestrate

CORE = (
    REPO / "orchestrator/roles/orchestrate_generations/module_utils/orchestrate_generation_core.py"
)
_spec = importlib.util.spec_from_file_location("orchestrate_generation_core", CORE)
assert _spec and _spec.loader
core: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core)

ME = (os.getuid(), os.getgid())


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/app").mkdir(parents=True)
    (root / "etc/app/app.conf").write_text("port 1\n")
    (root / "etc/app/app.conf").chmod(0o640)
    (root / "etc/keep").write_text("untouched\n")
    (root / "var/lib/orchestrate").mkdir(parents=True)
    return root


def apply(root: Path, run: str, change: Any, **opts: Any) -> dict[str, Any]:
    store = core.Store(str(root))
    core.begin(store, run, f"build-{run}", {"keep": 10, **opts})
    change(root)
    result: dict[str, Any] = core.end(store, run)
    return result


def second(root: Path) -> None:
    (root / "etc/app/app.conf").write_text("port 2\n")
    (root / "etc/app/app.conf").chmod(0o600)
    (root / "etc/app/extra.conf").write_text("new\n")
    (root / "etc/app/sub").mkdir()
    (root / "etc/app/sub/deep").write_text("deeper\n")


def test_an_apply_that_changes_nothing_records_no_generation(host: Path) -> None:
    assert apply(host, "r1", lambda r: None) == {"changed": False, "generation": None}
    assert core.Store(str(host)).numbers() == []
    assert not (host / "var/lib/orchestrate/generations/staging").exists()


def test_rollback_restores_content_and_mode_and_removes_what_was_created(host: Path) -> None:
    first = apply(host, "r1", lambda r: (r / "etc/app/app.conf").write_text("port 1b\n"))
    assert first["changed"] and first["generation"] == 1
    assert apply(host, "r2", second)["generation"] == 2
    store = core.Store(str(host))
    rec = store.record(2)
    assert {f["path"]: core.change_word(f) for f in rec["files"]} == {
        "/etc/app/app.conf": "changed",
        "/etc/app/extra.conf": "created",
        "/etc/app/sub": "created",
        "/etc/app/sub/deep": "created",
    }
    with store.locked():
        out = core.rollback(store, 1, "test")
    assert out["generation"] == 3 and out["restores"] == 1
    conf = host / "etc/app/app.conf"
    assert conf.read_text() == "port 1b\n" and oct(conf.stat().st_mode & 0o777) == "0o640"
    assert (conf.stat().st_uid, conf.stat().st_gid) == ME
    assert not (host / "etc/app/extra.conf").exists() and not (host / "etc/app/sub").exists()
    assert (host / "etc/keep").read_text() == "untouched\n"
    # the default target is the configuration before the current one's: 0, the host as it
    # was before its first generation
    with store.locked():
        assert core.rollback(store, None, "again")["restores"] == 0
    assert conf.read_text() == "port 1\n"
    listing = core.listing(store)
    assert [g["kind"] for g in listing["generations"]] == ["apply", "apply", "rollback", "rollback"]
    assert [g["current"] for g in listing["generations"]] == [False, False, False, True]


def test_a_rollback_can_itself_be_rolled_back(host: Path) -> None:
    apply(host, "r1", second)
    store = core.Store(str(host))
    with store.locked():
        core.rollback(store, 0, "undo")
    assert not (host / "etc/app/extra.conf").exists()
    with store.locked():
        core.rollback(store, 1, "redo")
    assert (host / "etc/app/extra.conf").read_text() == "new\n"
    assert (host / "etc/app/sub/deep").read_text() == "deeper\n"


def test_a_tampered_record_or_kept_file_is_refused(host: Path) -> None:
    apply(host, "r1", second)
    store = core.Store(str(host))
    gen = host / "var/lib/orchestrate/generations/1"
    record = json.loads((gen / "record.json").read_text())
    record["files"][0]["before"]["mode"] = "0777"
    (gen / "record.json").write_text(json.dumps(record))
    with store.locked(), pytest.raises(core.GenerationError, match="does not match its digest"):
        core.rollback(store, 0, "x")
    assert (host / "etc/app/app.conf").read_text() == "port 2\n"  # nothing was touched


def test_a_kept_file_changed_on_the_host_is_refused(host: Path) -> None:
    apply(host, "r1", second)
    blobs = list((host / "var/lib/orchestrate/generations/1/files").iterdir())
    blobs[0].write_text("not what was kept\n")
    store = core.Store(str(host))
    with store.locked(), pytest.raises(core.GenerationError, match="other content"):
        core.rollback(store, 0, "x")


def test_the_script_answers_in_json_and_refuses_a_generation_not_kept(host: Path) -> None:
    apply(host, "r1", second)
    cli = [sys.executable, str(CORE), "--prefix", str(host)]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True)
    assert json.loads(listed.stdout)["generations"][0]["number"] == 1
    bad = subprocess.run([*cli, "rollback", "7"], capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "generation 7 is not kept here" in json.loads(bad.stdout)["error"]


def test_only_the_newest_generations_are_kept(host: Path) -> None:
    for i in range(5):
        apply(host, f"r{i}", lambda r, i=i: (r / "etc/keep").write_text(f"{i}\n"), keep=3)
    assert core.Store(str(host)).numbers() == [3, 4, 5]


def test_an_unconfirmed_apply_is_undone_by_the_watchdog(host: Path) -> None:
    store = core.Store(str(host))
    core.begin(store, "r1", "b", {"magic": True, "timeout": 1})
    second(host)
    assert core.end(store, "r1")["generation"] == 1
    assert store.pending()["state"] == "awaiting"
    core.watch(store, poll=0.1)  # returns once it has acted
    assert (host / "etc/app/app.conf").read_text() == "port 1\n"
    assert not (host / "etc/app/extra.conf").exists()
    assert store.status(1)["state"].startswith("rolled back: not reachable after apply")
    assert core.confirm(store, "r1", [])["confirmed"] is False


def test_a_confirmed_apply_stays(host: Path) -> None:
    store = core.Store(str(host))
    core.begin(store, "r1", "b", {"magic": True, "timeout": 30})
    second(host)
    core.end(store, "r1")
    assert core.confirm(store, "r1", [])["confirmed"] is True
    assert store.pending() is None
    assert (host / "etc/app/app.conf").read_text() == "port 2\n"


def test_an_apply_whose_connection_was_lost_midway_is_undone(host: Path) -> None:
    store = core.Store(str(host))
    core.begin(store, "r1", "b", {"magic": True, "timeout": 1})
    second(host)  # ... and its last task never ran: the session is gone (there was none)
    core.watch(store, poll=0.1)
    assert (host / "etc/app/app.conf").read_text() == "port 1\n"
    assert store.status(1)["state"] == "rolled back: the connection was lost before the apply ended"


# -- health checks: how they are declared, and the ones that start on this machine -----------


CHECKS_FLEET = {
    "fleet.yaml": "name: ck\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [m.yaml]\nhosts:\n"
    "  a: {builder: x86_64, modules: [a.yaml]}\n  b: {builder: x86_64, modules: [a.yaml]}\n",
    "a.yaml": "config: {}\n",
}


def _module(checks: str) -> str:
    return (
        "options:\n  svc.port: {type: integer, default: 8080}\n"
        "  svc.on: {type: boolean, default: true}\nchecks:\n" + checks
    )


def test_checks_are_evaluated_per_host_and_kept_in_the_build(fleet: Any, cli: Any) -> None:
    root = fleet({**CHECKS_FLEET, "m.yaml": _module(
        "  - name: port answers\n    when: config.svc.on\n"
        "    tcp: {port: \"${config.svc.port}\", from: b}\n    timeout: 10\n"
        "  - name: idle\n    when: '!config.svc.on'\n    command: {run: 'false'}\n"
    )})  # fmt: skip
    r = cli("--fleet", str(root), "compile")
    assert r.code == 0, r.err
    data = json.loads((root / ".orchestrate/build/fleet.json").read_text())
    assert data["hosts"]["a"]["checks"] == [
        {"name": "port answers", "tcp": {"from": "b", "port": 8080}, "timeout": 10}
    ]


@pytest.mark.parametrize(
    ("check", "said"),
    [
        ('    http: {url: "http://x/", status: "${config.svc.port}"}\n',
         "status is 8080: give a whole number from 100 to 599"),
        ("    command: {run: x, output: '(['}\n", "output is not a regular expression"),
        ("    tcp: {port: 22, from: nowhere}\n", "from is 'nowhere': control, self or a host"),
        ("    command: {run: x}\n    http: {url: y}\n", "has command and http: give one of"),
        ("    timeout: 5\n", "check 'broken' has none: give one of command, http, tcp"),
    ],
)  # fmt: skip
def test_a_bad_check_is_located_and_nothing_is_written(
    fleet: Any, cli: Any, check: str, said: str
) -> None:
    root = fleet({**CHECKS_FLEET, "m.yaml": _module("  - name: broken\n" + check)})
    r = cli("--fleet", str(root), "compile")
    assert r.code == 1
    assert "m.yaml:" in r.err and said in r.err, r.err
    assert not (root / ".orchestrate/build").exists()


def test_http_and_tcp_checks_from_this_machine_retry_until_they_pass_or_time_out() -> None:
    import http.server
    import socket
    import threading

    from orchestrator.executor import checks

    class Ready(http.server.BaseHTTPRequestHandler):
        calls = 0

        def do_GET(self) -> None:
            Ready.calls += 1
            code = 200 if Ready.calls >= 2 else 503  # ready at the second attempt
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"Ready\n" if code == 200 else b"starting\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    found = checks.run_all(
        "h",
        [
            {"name": "ready", "http": {"url": f"http://127.0.0.1:{port}/", "body": "^Ready"},
             "timeout": 10, "interval": 1},
            {"name": "open", "tcp": {"port": port, "address": "127.0.0.1"}},
            {"name": "dead", "tcp": {"port": dead}, "timeout": 2, "interval": 1},
        ],
        {},
        "127.0.0.1",
    )  # fmt: skip
    server.shutdown()
    by = {c.name: c for c in found}
    assert by["ready"].passed and by["ready"].output == "HTTP 200: Ready"
    assert by["open"].passed
    assert not by["dead"].passed and "closed" in by["dead"].output
    assert by["dead"].seconds >= 2


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("apply", "--trial", "soon"), "'soon' is not a duration (90s, 10m, 1h)"),
        (("apply", "--on-failure", "panic"), "invalid choice: 'panic'"),
        (("apply", "--confirm-timeout", "2", "--yes"), "--confirm-timeout is a number of seconds"),
        (("apply", "--reboot=sometimes"), "invalid choice: 'sometimes'"),
        (("generations", "nosuchhost"), "no host named 'nosuchhost' in the fleet"),
        (("rollback", "--limit", "@nogroup"), "no host or group named '@nogroup'"),
    ],
)
def test_bad_rollout_flags_are_refused_before_anything_runs(
    fleet: Any, cli: Any, args: tuple[str, ...], said: str
) -> None:
    root = fleet({**CHECKS_FLEET, "m.yaml": "options:\n  svc.port: {type: integer, default: 1}\n"})
    r = orchestrate(root, *args)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert said in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / ".orchestrate" / "runs").exists()


def test_an_apply_during_a_trial_keeps_the_trial_and_begins_anew(host: Path) -> None:
    store = core.Store(str(host))
    core.begin(store, "r1", "b", {"magic": True, "timeout": 30})
    second(host)
    assert core.end(store, "r1", trial=600)["generation"] == 1
    apply(host, "r2", lambda r: (r / "etc/keep").write_text("later\n"))
    assert store.status(1)["state"] == "kept: a later apply began"
    assert store.pending() is None and store.numbers() == [1, 2]


def test_a_rollback_reloads_a_one_shot_unit_whose_files_it_restored(host: Path) -> None:
    """On a host without systemd a one-shot unit (nftables loading its ruleset) has no state to
    ask; a rollback that restores its files runs its work again. A daemon's unit is not run."""
    units = host / "lib/systemd/system"
    units.mkdir(parents=True)
    (units / "nftables.service").write_text(
        "[Service]\nType=oneshot\nExecReload=/usr/sbin/nft -f /etc/nftables.conf\n"
    )
    (units / "daemon.service").write_text("[Service]\nType=simple\nExecStart=/usr/bin/daemon\n")
    (host / "etc/nftables.conf").write_text("accept\n")
    (host / "etc/daemon.conf").write_text("one\n")

    def change(root: Path) -> None:
        (root / "etc/nftables.conf").write_text("drop\n")
        (root / "etc/daemon.conf").write_text("two\n")

    assert apply(host, "r1", change)["generation"] == 1
    store = core.Store(str(host))
    with store.locked():
        out = core.rollback(store, 0, "test")
    assert (host / "etc/nftables.conf").read_text() == "accept\n"
    assert out["actions"] == ["nftables: reload (not run in a test folder)"]
