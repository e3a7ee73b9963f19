#!/usr/bin/env python3
"""What safe rollout costs, on real container hosts, in one run:

1. the time generations and confirmation add to `orchestrate apply`: a no-change and a
   one-change apply of N testbed hosts, with generations (the default: staged trees, a
   generation per changed host, a confirmation over a new SSH connection) and with
   ``--no-generations``, in interleaved rounds;
2. the time from a lost connection to the host answering again: an apply that moves one
   host's sshd to a port the control node cannot reach; the host rolls itself back, and the
   control node reports how long after the failed confirmation it answered (goal: under the
   confirm timeout + 15 s).

Medians and ratios are printed and written to benchmarks/work/rollout-results.json.

    python3 benchmarks/bench_rollout.py --hosts 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_apply import orchestrate  # the CLI as a user runs it

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
TIMEOUT = 10  # the fleet's deploy.confirm_timeout

MODULE = """
options:
  bench.message: {type: string, default: hello}
  bench.ssh_port: {type: integer, default: 22}
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
  - name: Configure sshd's port
    ansible.builtin.copy:
      dest: /etc/ssh/sshd_config.d/10-orchestrate.conf
      content: "Port {{ config.bench.ssh_port }}\\n"
      mode: "0644"
    notify: Signal sshd
handlers:
  - name: Signal sshd
    ansible.builtin.shell: kill -HUP "$(cat /run/sshd.pid)"
"""


def make_fleet(n: int) -> Path:
    root = WORK / f"rollout-fleet-{n}"
    (root / "hosts").mkdir(parents=True, exist_ok=True)
    hosts = "".join(
        f"  rb-{i}: {{builder: x86_64, modules: [hosts/rb-{i}.yaml]}}\n" for i in range(n)
    )
    (root / "fleet.yaml").write_text(
        "name: rollbench\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [bench.yaml]\n"
        f"deploy: {{confirm_timeout: {TIMEOUT}}}\nhosts:\n" + hosts
    )
    (root / "bench.yaml").write_text(MODULE)
    for i in range(n):
        set_host(root, f"rb-{i}", "hello")
    return root


def set_host(root: Path, host: str, message: str, port: int = 22) -> None:
    (root / "hosts" / f"{host}.yaml").write_text(
        f"config:\n  bench.message: {message}\n  bench.ssh_port: {port}\n"
    )


def timed(root: Path, *args: str) -> float:
    start = time.perf_counter()
    r = orchestrate(root, "apply", "--yes", *args)
    took = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"apply {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return took


def overhead(root: Path, n: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {
        "no-change": {"generations": [], "none": []},
        "one-change": {"generations": [], "none": []},
    }
    counter = 0
    for _ in range(rounds):
        for name, flags in (("generations", ()), ("none", ("--no-generations",))):
            out["no-change"][name].append(timed(root, *flags))
            counter += 1
            for i in range(n):
                set_host(root, f"rb-{i}", f"round-{counter}")
            out["one-change"][name].append(timed(root, *flags))
    return out


def lost_connection(root: Path, rounds: int) -> list[float]:
    """Seconds from the failed confirmation to the host answering again, per round."""
    found = []
    for _ in range(rounds):
        set_host(root, "rb-0", "lost", port=2222)
        r = orchestrate(root, "apply", "--yes", "--limit", "rb-0", "--json")
        if r.returncode != 3:
            raise SystemExit(f"the unreachable port did not roll back:\n{r.stdout}\n{r.stderr}")
        rollout = json.loads(r.stdout)["rollout"]["rb-0"]
        found.append(float(rollout["recovered"]))
        set_host(root, "rb-0", "hello")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    root = make_fleet(args.hosts)
    up = orchestrate(root, "testbed", "up")
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        timed(root)  # converge first
        costs = overhead(root, args.hosts, args.rounds)
        lost = lost_connection(root, args.rounds)
    finally:
        orchestrate(root, "testbed", "down")
    report: dict[str, object] = {
        "hosts": args.hosts,
        "rounds": args.rounds,
        "confirm_timeout": TIMEOUT,
    }
    for case, runs in costs.items():
        gen, none = statistics.median(runs["generations"]), statistics.median(runs["none"])
        report[case] = {"generations": round(gen, 2), "none": round(none, 2),
                        "added": f"{100 * (gen - none) / none:+.1f}%"}  # fmt: skip
        print(f"{case:>10}: with generations {gen:.2f} s, without {none:.2f} s "
              f"({100 * (gen - none) / none:+.1f}%)")  # fmt: skip
    report["lost_connection"] = {"median": statistics.median(lost), "runs": lost}
    print(f"lost connection -> answering again: median {statistics.median(lost):.1f} s "
          f"(confirm timeout {TIMEOUT} s; goal under {TIMEOUT + 15} s)")  # fmt: skip
    (WORK / "rollout-results.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
