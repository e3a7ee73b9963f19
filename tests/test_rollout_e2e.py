"""Generations, rollback and magic rollback on real container hosts over SSH: the CLI as a
user runs it, the hosts' own watchdogs, and sshd listening where its configuration says."""

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
from test_deploy_e2e import CONTAINERS, podman_exec, start_testbed

pytestmark = pytest.mark.containers

HOSTS = ["rt-0", "rt-1", "rt-2"]
MODULE = """
options:
  rt.message: {type: string, default: one}
  rt.extra: {type: boolean, default: false}
  rt.ssh_port: {type: integer, default: 22}
  rt.fail: {type: boolean, default: false}
  rt.expect: {type: string, default: ""}
  rt.ask_reboot: {type: boolean, default: false}
  rt.firewall: {enum: ["", open, drop-ssh], default: ""}
checks:
  - name: the message says what is expected
    when: config.rt.expect != ''
    command: {run: "cat /etc/rt/message", output: "^${config.rt.expect}$"}
    timeout: 4
    interval: 1
tasks:
  - name: Make the folder
    ansible.builtin.file: {path: /etc/rt, state: directory, mode: "0755"}
  - name: Write the message
    ansible.builtin.copy:
      dest: /etc/rt/message
      content: "{{ config.rt.message }}\\n"
      mode: "{{ '0600' if config.rt.extra else '0644' }}"
  - name: Write the extra file
    ansible.builtin.copy: {dest: /etc/rt/extra, content: "extra\\n", mode: "0644"}
    when: config.rt.extra
  - name: Ask for a reboot, as a package would
    ansible.builtin.copy: {dest: /run/reboot-required, content: "", mode: "0644"}
    when: config.rt.ask_reboot
  - name: Fail on purpose
    ansible.builtin.fail: {msg: failing as configured}
    when: config.rt.fail
  - name: Configure sshd's port
    ansible.builtin.copy:
      dest: /etc/ssh/sshd_config.d/10-orchestrate.conf
      content: "Port {{ config.rt.ssh_port }}\\n"
      mode: "0644"
      validate: /usr/sbin/sshd -t -f %s
    notify: Signal sshd
  - name: Install nftables
    ansible.builtin.apt: {name: nftables, update_cache: true, install_recommends: false}
    when: config.rt.firewall != ''
  # new SSH connections are dropped, as on a host whose firewall lets SSH in only over the VPN;
  # the apply's own connection, already established, finishes
  - name: Write the ruleset
    ansible.builtin.copy:
      dest: /etc/nftables.conf
      content: |
        flush ruleset
        table inet rtest {
          chain input {
            type filter hook input priority 0; policy accept;
            {{ 'tcp dport 22 ct state new drop' if config.rt.firewall == 'drop-ssh' else '' }}
          }
        }
      mode: "0644"
    when: config.rt.firewall != ''
    notify: Load the ruleset
handlers:
  - name: Signal sshd
    ansible.builtin.shell: kill -HUP "$(cat /run/sshd.pid)"
  - name: Load the ruleset
    ansible.builtin.command: /usr/sbin/nft -f /etc/nftables.conf
"""
FLEET = (
    "name: rttest\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [rt.yaml]\n"
    "deploy: {confirm_timeout: 6}\nhosts:\n"
    + "".join(f"  {h}: {{builder: x86_64, modules: [hosts/{h}.yaml]}}\n" for h in HOSTS)
)


def set_host(root: Path, host: str, **values: object) -> None:
    body = "config:\n" + "".join(f"  rt.{k}: {json.dumps(v)}\n" for k, v in values.items())
    (root / "hosts" / f"{host}.yaml").write_text(body if values else "config: {}\n")


def cat(host: str, path: str) -> str | None:
    r = podman_exec(host, "cat", path)
    return r.stdout if r.returncode == 0 else None


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("rtfleet")
    files = {"fleet.yaml": FLEET, "rt.yaml": MODULE}
    files.update({f"hosts/{h}.yaml": "config: {}\n" for h in HOSTS})
    write_tree(root, files)
    start_testbed(root)
    first = orchestrate(root, "apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    yield root
    orchestrate(root, "testbed", "down")


@pytest.fixture
def fleet(rt: Path) -> Iterator[Path]:
    for h in HOSTS:
        set_host(rt, h)
    yield rt
    for h in HOSTS:
        set_host(rt, h)
    back = orchestrate(rt, "apply", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr


def generations(root: Path, host: str) -> list[dict[str, object]]:
    r = orchestrate(root, "generations", host, "--json")
    assert r.returncode == 0, r.stderr
    listed: list[dict[str, object]] = json.loads(r.stdout)["generations"]
    return listed


def test_rollback_restores_content_owner_and_mode_and_removes_created_files(fleet: Path) -> None:
    set_host(fleet, "rt-0", message="two")
    assert orchestrate(fleet, "apply", "--limit", "rt-0").returncode == 0
    at = len(generations(fleet, "rt-0"))
    set_host(fleet, "rt-0", message="three", extra=True)
    assert orchestrate(fleet, "apply", "--limit", "rt-0").returncode == 0
    assert cat("rt-0", "/etc/rt/extra") == "extra\n"
    podman_exec("rt-0", "chown", "nobody", "/etc/rt/message")  # by hand: rollback resets it too
    r = orchestrate(fleet, "rollback", "--limit", "rt-0", "--to", str(at))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"rolled back to generation {at}" in r.stdout
    assert cat("rt-0", "/etc/rt/message") == "two\n"
    stat = podman_exec("rt-0", "stat", "-c", "%a %U %G", "/etc/rt/message").stdout.split()
    assert stat == ["644", "root", "root"]
    assert cat("rt-0", "/etc/rt/extra") is None
    listed = generations(fleet, "rt-0")
    assert listed[-1]["kind"] == "rollback" and listed[-1]["current"] is True
    assert listed[-1]["restores"] == at
    # the control node now holds rt-0 at generation `at`: the next plan shows the fleet's
    # "three" against the "two" the host runs
    plan = orchestrate(fleet, "plan", "--offline", "--limit", "rt-0", "--json")
    changes = json.loads(plan.stdout)["hosts"]["rt-0"]["config_changes"]
    assert {"path": "rt.message", "old": "two", "new": "three"} in changes


def test_a_port_the_control_node_cannot_reach_rolls_back_by_itself(fleet: Path) -> None:
    set_host(fleet, "rt-1", ssh_port=2222)
    started = time.monotonic()
    r = orchestrate(fleet, "apply", "--yes", timeout=600)
    took = time.monotonic() - started
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rt-1: rolled back: not reachable after apply" in r.stderr
    assert cat("rt-1", "/etc/ssh/sshd_config.d/10-orchestrate.conf") == "Port 22\n"
    state = json.loads((fleet / ".orchestrate/state/rt-1.json").read_text())
    assert state["config"]["rt"]["ssh_port"] == 22  # the last-applied state stayed
    assert orchestrate(fleet, "generations", "rt-1").returncode == 0  # it answers again
    assert took < 300
    summary = json.loads(sorted((fleet / ".orchestrate/runs").glob("*-apply*"))[-1].joinpath(
        "summary.json").read_text())  # fmt: skip
    assert summary["rollout"]["rt-0"]["outcome"] == "unchanged"


def test_a_firewall_rule_that_drops_ssh_rolls_back_by_itself(fleet: Path) -> None:
    set_host(fleet, "rt-2", firewall="open")
    opened = orchestrate(fleet, "apply", "--yes", "--limit", "rt-2", timeout=600)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    set_host(fleet, "rt-2", firewall="drop-ssh")
    r = orchestrate(fleet, "apply", "--yes", "--limit", "rt-2", timeout=600)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rt-2: rolled back: not reachable after apply" in r.stderr
    # the old ruleset is back on disk and loaded again (by nftables's one-shot unit's command,
    # on a host without systemd), and SSH answers
    assert "drop" not in (cat("rt-2", "/etc/nftables.conf") or "drop")
    assert "drop" not in podman_exec("rt-2", "nft", "list", "ruleset").stdout
    assert orchestrate(fleet, "generations", "rt-2").returncode == 0
    state = json.loads((fleet / ".orchestrate/state/rt-2.json").read_text())
    assert state["config"]["rt"]["firewall"] == "open"


def test_a_failed_host_is_rolled_back_unless_told_to_stop(fleet: Path) -> None:
    set_host(fleet, "rt-2", message="broken", fail=True)
    r = orchestrate(fleet, "apply", "--yes")
    assert r.returncode == 3
    assert "rt-2: rolled back: a task failed" in r.stderr
    assert cat("rt-2", "/etc/rt/message") == "one\n"
    kept = orchestrate(fleet, "apply", "--yes", "--on-failure", "stop")
    assert kept.returncode == 3
    assert cat("rt-2", "/etc/rt/message") == "broken\n"


def test_a_trial_reverts_without_confirm_and_stays_with_it(fleet: Path) -> None:
    set_host(fleet, "rt-0", message="trial")
    r = orchestrate(fleet, "apply", "--limit", "rt-0", "--trial", "8s")
    assert r.returncode == 0, r.stderr
    assert "on trial" in r.stderr and cat("rt-0", "/etc/rt/message") == "trial\n"
    _wait_for(lambda: cat("rt-0", "/etc/rt/message") == "one\n", 60)
    assert orchestrate(fleet, "apply", "--limit", "rt-0", "--trial", "12s").returncode == 0
    c = orchestrate(fleet, "confirm", "--limit", "rt-0")
    assert c.returncode == 0, c.stderr
    time.sleep(14)  # past the trial's end
    assert cat("rt-0", "/etc/rt/message") == "trial\n"


def test_kill_9_before_the_confirmation_still_ends_rolled_back(fleet: Path) -> None:
    set_host(fleet, "rt-1", message="killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(fleet), "apply", "--yes",
         "--limit", "rt-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    pending = "/var/lib/orchestrate/generations/pending.json"
    _wait_for(lambda: '"awaiting"' in (cat("rt-1", pending) or ""), 120)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    _wait_for(lambda: cat("rt-1", "/etc/rt/message") == "one\n", 60)


def test_a_tampered_generation_record_is_refused(fleet: Path) -> None:
    set_host(fleet, "rt-2", message="tamper")
    assert orchestrate(fleet, "apply", "--limit", "rt-2").returncode == 0
    n = generations(fleet, "rt-2")[-1]["number"]
    record = f"/var/lib/orchestrate/generations/{n}/record.json"
    podman_exec("rt-2", "sed", "-i", 's/"0644"/"0777"/', record)
    r = orchestrate(fleet, "rollback", "--limit", "rt-2")
    assert r.returncode == 3
    assert "was changed on the host" in r.stderr and "refusing" in r.stderr
    assert cat("rt-2", "/etc/rt/message") == "tamper\n"
    podman_exec("rt-2", "rm", "-rf", f"/var/lib/orchestrate/generations/{n}")


def test_a_failing_check_in_the_first_batch_rolls_back_and_stops_the_rollout(fleet: Path) -> None:
    set_host(fleet, "rt-0", message="batch", expect="nope")
    for h in ("rt-1", "rt-2"):
        set_host(fleet, h, message="batch")
    plan = orchestrate(fleet, "plan", "--offline", "--limit", "rt-0")
    assert "check after the apply: the message says what is expected" in plan.stdout
    r = orchestrate(fleet, "apply", "--yes", "--serial", "1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rt-0: rolled back: check 'the message says what is expected' failed" in r.stderr
    assert "exit 0: batch" in r.stderr  # the check's own output
    assert cat("rt-0", "/etc/rt/message") == "one\n"
    assert cat("rt-1", "/etc/rt/message") == cat("rt-2", "/etc/rt/message") == "one\n"
    stop = orchestrate(fleet, "apply", "--yes", "--serial", "1", "--on-failure", "stop")
    assert stop.returncode == 3 and "a check failed (kept" in stop.stderr
    assert cat("rt-0", "/etc/rt/message") == "batch\n"  # stays as applied
    assert cat("rt-1", "/etc/rt/message") == "one\n"  # and the next batch never started


def started_at(host: str) -> str:
    from test_deploy_e2e import podman

    return podman("inspect", "-f", "{{.State.StartedAt}}", CONTAINERS[host]).stdout.strip()


def test_reboot_restarts_only_the_hosts_that_ask_and_checks_run_after(fleet: Path) -> None:
    before = {h: started_at(h) for h in HOSTS}
    set_host(fleet, "rt-0", message="after-reboot", ask_reboot=True, expect="after-reboot")
    set_host(fleet, "rt-1", message="no-reboot")
    r = orchestrate(fleet, "apply", "--yes", "--reboot", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rollout = json.loads(r.stdout)["rollout"]
    assert rollout["rt-0"]["outcome"] == "applied" and rollout["rt-1"]["outcome"] == "applied"
    assert started_at("rt-0") != before["rt-0"]  # its container was restarted
    assert started_at("rt-1") == before["rt-1"] and started_at("rt-2") == before["rt-2"]
    assert cat("rt-0", "/etc/rt/message") == "after-reboot\n"
    assert cat("rt-0", "/run/reboot-required") is None  # gone with the boot


def _wait_for(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError("timed out waiting")
