#!/usr/bin/env python3
"""Apply speed on real container hosts: the same generated playbook three ways, in one run.

1. ``ansible-playbook`` with Ansible's default settings (no ansible.cfg: forks 5, no pipelining);
2. ``ansible-playbook`` with the build's tuned ansible.cfg (pipelining, ControlPersist, forks by
   fleet size, explicit fact gathering);
3. ``orchestrate apply --yes`` (ansible-runner's Python API, live event handling, run records,
   on Mitogen: one Python interpreter per host);
4. ``orchestrate apply --yes --strategy ansible`` (the same on Ansible's own strategy).

Both ``ansible-playbook`` runs use Ansible's own strategy, as people run Ansible.

All three run against the same N testbed hosts, in interleaved rounds, on a converged fleet and
on a fleet where every host has one change to make. Medians and ratios are printed and written
to benchmarks/work/apply-results.json. With ``--bundled`` it also times a no-change apply of the
bundled fleet (all six hosts, aarch64 under emulation).

    python3 benchmarks/bench_apply.py --hosts 12 --rounds 3 [--bundled]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"

MODULE = """
options:
  bench.message: {type: string, default: hello}
tasks:
  - name: Make the folder
    ansible.builtin.file: {path: /etc/orchestrate-bench, state: directory, mode: "0755"}
  - name: Write the message
    ansible.builtin.copy:
      dest: /etc/orchestrate-bench/message
      content: "{{ config.bench.message }}\\n"
      mode: "0644"
  - name: Write a template
    ansible.builtin.copy:
      dest: /etc/orchestrate-bench/host
      content: "{{ inventory_hostname }}\\n"
      mode: "0644"
  - name: Read the kernel name
    ansible.builtin.command: uname -s
    changed_when: false
"""


def orchestrate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def make_fleet(n: int) -> Path:
    root = WORK / f"apply-fleet-{n}"
    (root / "hosts").mkdir(parents=True, exist_ok=True)
    hosts = "".join(f"  bench-{i}: {{builder: x86_64}}\n" for i in range(n))
    (root / "fleet.yaml").write_text(
        "name: bench\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [bench.yaml]\nhosts:\n" + hosts
    )
    set_message(root, "hello")
    return root


def set_message(root: Path, message: str) -> None:
    (root / "bench.yaml").write_text(MODULE + f"config:\n  bench.message: {message}\n")


CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/libpod_parent/cpuacct.usage")


class Meter:
    """Wall time plus where the CPU went: the controller (this process's children: Ansible,
    ssh) and the container hosts (podman's cgroup, when this machine exposes it)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {"wall": [], "controller_cpu": [], "hosts_cpu": []}

    def run(
        self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        hosts_before = _hosts_cpu()
        start = time.perf_counter()
        r = subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        took = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        self.samples["wall"].append(took)
        self.samples["controller_cpu"].append(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        )
        self.samples["hosts_cpu"].append(_hosts_cpu() - hosts_before)


def _hosts_cpu() -> float:
    try:
        return int(CGROUP_CPU.read_text()) / 1e9
    except (OSError, ValueError):
        return float("nan")


def playbook_cmds(root: Path) -> tuple[list[str], dict[str, str], dict[str, str], Path]:
    """ansible-playbook on the project of orchestrate's last run (same playbook, same vars)."""
    build = root / ".orchestrate" / "build"
    runs = sorted((root / ".orchestrate" / "runs").glob("*-apply*"))
    project = runs[-1] / "project"
    cmd = ["ansible-playbook", "-i", str(build / "inventory" / "hosts.json"), "site.yml"]
    base = {**os.environ, "ANSIBLE_ROLES_PATH": str(build / "roles"), "ANSIBLE_NOCOLOR": "1"}
    empty = WORK / "empty-ansible.cfg"
    empty.write_text("[defaults]\n")
    default_env = {**base, "ANSIBLE_CONFIG": str(empty)}
    # the build's ansible.cfg names Mitogen; Ansible as people run it has its own strategy
    tuned_env = {**base, "ANSIBLE_CONFIG": str(build / "ansible.cfg"), "ANSIBLE_STRATEGY": "linear"}
    return cmd, default_env, tuned_env, project


def bench(root: Path, rounds: int, change: bool) -> dict[str, Meter]:
    meters = {"default": Meter(), "tuned": Meter(), "orchestrate": Meter(), "orch-ansible": Meter()}
    cmd, default_env, tuned_env, project = playbook_cmds(root)
    orch = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), "apply", "--yes"]
    counter = 0

    def prepare() -> None:
        nonlocal counter
        if change:  # every host has one file to rewrite; recompile so the playbooks see it
            counter += 1
            set_message(root, f"round-{counter}")
            assert orchestrate(root, "compile").returncode == 0

    for _ in range(rounds):
        prepare()
        meters["default"].run(cmd, default_env, project)
        prepare()
        meters["tuned"].run(cmd, tuned_env, project)
        prepare()
        meters["orchestrate"].run(orch)
        prepare()
        meters["orch-ansible"].run([*orch, "--strategy", "ansible"])
    return meters


def bundled_fleet() -> Path:
    """A copy of the bundled fleet with its demo host keys queued for delivery."""
    import shutil

    root = WORK / "bundled"
    if root.exists():
        orchestrate(root, "testbed", "down")
        shutil.rmtree(root)
    shutil.copytree(REPO / "inventory", root, ignore=shutil.ignore_patterns(".orchestrate"))
    for host in ("cortex-alpha", "data-storage", "terminal-zero"):
        key = root / "demo-keys" / "hosts" / f"{host}.agekey"
        r = orchestrate(root, "secrets", "host-key", host, "--import", str(key), "--force")
        if r.returncode != 0:
            raise SystemExit(r.stderr)
    return root


def bundled_no_change(rounds: int) -> dict[str, Meter]:
    """No-change applies of the bundled fleet (six hosts, two of them aarch64 under emulation),
    on Mitogen and on Ansible's own strategy, interleaved."""
    root = bundled_fleet()
    up = orchestrate(root, "testbed", "up", "--preload")
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    orchestrate(root, "apply", "--yes")
    meters = {"mitogen": Meter(), "ansible": Meter()}
    orch = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), "apply", "--yes"]
    for _ in range(rounds):
        for name, meter in meters.items():
            meter.run([*orch, "--strategy", name])
    return meters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bundled", action="store_true", help="also time the bundled fleet")
    p.add_argument("--keep", action="store_true", help="leave the testbed up")
    args = p.parse_args()
    WORK.mkdir(exist_ok=True)
    root = make_fleet(args.hosts)
    up = orchestrate(root, "testbed", "up")
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    results: dict[str, Any] = {"hosts": args.hosts, "rounds": args.rounds}
    try:
        assert orchestrate(root, "apply", "--yes").returncode == 0  # converge first
        for label, change in (("no-change", False), ("one-change-per-host", True)):
            meters = bench(root, args.rounds, change)
            med = {k: statistics.median(m.samples["wall"]) for k, m in meters.items()}
            results[label] = {
                "samples": {k: m.samples for k, m in meters.items()},
                "median": med,
                "median_controller_cpu": {
                    k: statistics.median(m.samples["controller_cpu"]) for k, m in meters.items()
                },
                "median_hosts_cpu": {
                    k: statistics.median(m.samples["hosts_cpu"]) for k, m in meters.items()
                },
                "default_over_orchestrate": med["default"] / med["orchestrate"],
                "tuned_over_orchestrate": med["tuned"] / med["orchestrate"],
            }
        if args.bundled:
            b = bundled_no_change(args.rounds)
            results["bundled-no-change"] = {
                name: {
                    "samples": m.samples,
                    "median": {k: statistics.median(v) for k, v in m.samples.items()},
                }
                for name, m in b.items()
            }
    finally:
        if not args.keep:
            orchestrate(root, "testbed", "down")
            if args.bundled:
                orchestrate(WORK / "bundled", "testbed", "down")
    (WORK / "apply-results.json").write_text(json.dumps(results, indent=2))
    print(f"{args.hosts} container hosts, {args.rounds} interleaved rounds, medians in seconds")
    print(
        f"{'scenario':22} {'default':>8} {'tuned':>8} {'orch.':>8} {'orch/ans':>9}"
        f" {'def/orch':>9} {'tuned/orch':>10}"
    )
    for label in ("no-change", "one-change-per-host"):
        r = results[label]
        m = r["median"]
        print(
            f"{label:22} {m['default']:8.2f} {m['tuned']:8.2f} {m['orchestrate']:8.2f}"
            f" {m['orch-ansible']:9.2f} {r['default_over_orchestrate']:8.2f}x"
            f" {r['tuned_over_orchestrate']:9.2f}x"
        )
    print("CPU seconds (medians), controller = Ansible + ssh on this machine, hosts = containers")
    for label in ("no-change", "one-change-per-host"):
        r = results[label]
        c, h = r["median_controller_cpu"], r["median_hosts_cpu"]
        print(
            f"{label:22} controller default {c['default']:.1f} tuned {c['tuned']:.1f}"
            f" orch. {c['orchestrate']:.1f} orch/ans {c['orch-ansible']:.1f}"
            f" | hosts default {h['default']:.1f} tuned {h['tuned']:.1f}"
            f" orch. {h['orchestrate']:.1f} orch/ans {h['orch-ansible']:.1f}"
        )
    for name, b in results.get("bundled-no-change", {}).items():
        m = b["median"]
        print(
            f"bundled fleet, no-change apply on {name}: {m['wall']:.2f}s wall,"
            f" controller {m['controller_cpu']:.1f} CPU s, hosts {m['hosts_cpu']:.1f} CPU s"
        )


if __name__ == "__main__":
    main()
