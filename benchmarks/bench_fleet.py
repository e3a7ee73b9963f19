#!/usr/bin/env python3
"""Benchmark orchestrate on synthetic fleets of N hosts.

For each size N this script:

1. generates a fleet of N hosts into benchmarks/work/fleet-N/ (about 20 module instances per
   host, two builders, tags, cross-host references to a few anchor hosts, monitor hosts that
   discover their targets with ``values(hosts)[?...]``);
2. times ``orchestrate --fleet DIR compile --full`` (wall time and peak RSS), then incremental
   compiles: after an edit of one host's own file, and after an edit of a value a quarter of
   the hosts read (an anchor's port); the build they leave is compared with a full compile's;
3. times ``orchestrate --fleet DIR query EXPR`` for ``length(hosts)`` and a selective filter;
4. times ``orchestrate inventory --list`` against ``ansible-inventory --list`` on the build;
5. times how long ``ansible-playbook`` takes to reach the first task of a one-task play limited
   to one host (``-c local``), and its total time.

Medians are printed as a table with PASS/FAIL against the targets and written as JSON to
benchmarks/work/results.json. Peak memory is the child's ``ru_maxrss`` from ``os.wait4``, the
same number ``/usr/bin/time -v`` prints as "Maximum resident set size".

    python3 benchmarks/bench_fleet.py --hosts 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"

SERVICES = 16  # shared service modules, each declaring 5 options
ANCHORS = 4  # hosts every other host reads from (no long reference chains)
TIERS = ("web", "db", "cache", "batch")
RACKS = 20
ROLE_SERVICES = (1, 2, 3, 4)  # service modules that also generate a role with tasks

# Targets. Compile and query targets apply to the 10,000-host fleet, the others to every size.
COMPILE_TIME_LIMIT = 30.0
COMPILE_RSS_LIMIT_MIB = 2048.0
INCREMENTAL_LIMIT = 0.5  # one-host edit, 10,000 hosts (issue 19)
QUERY_LIMIT = 1.0
INVENTORY_RATIO_MIN = 10.0
FIRST_TASK_LIMIT = 10.0
TARGET_SIZE = 10_000


# --------------------------------------------------------------------------- fleet generation
def host_name(i: int) -> str:
    return f"host-{i:05d}"


def address(i: int) -> str:
    return f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}"


def monitor_indices(n: int) -> list[int]:
    count = max(2, min(5, n // 2000))
    step = n // count
    return [step * k + step // 2 for k in range(count)]


def _service_module(k: int) -> str:
    svc = f"services.svc{k:02d}"
    lines = [
        f"# Synthetic service {k}: five options, a when block, !default and expressions.",
        "options:",
        f"  {svc}.enable: {{type: boolean, default: false, description: Run svc{k:02d}.}}",
        f'  {svc}.port: {{$ref: "orchestrate:port", default: {10000 + k}}}',
        f'  {svc}.listen_address: {{$ref: "orchestrate:ipv4", default: 0.0.0.0}}',
        f"  {svc}.extra_args: {{type: array, items: {{type: string}}, default: []}}",
        f'  {svc}.upstream: {{type: string, default: ""}}',
        "config:",
        "  - set:",
        f"      {svc}.listen_address: !default 127.0.0.1",
        f"  - when: config.{svc}.enable",
        "    set:",
        f'      networking.firewall.allowed_tcp_ports: ["${{config.{svc}.port}}"]',
        f"      {svc}.extra_args:",
        f'        - "--port=${{config.{svc}.port}}"',
        f'        - "--name=${{host.name}}-svc{k:02d}"',
    ]
    if k % 4 == 0:
        # aarch64 boards run every fourth service with a forced, smaller argument list
        lines += [
            f"  - when: config.{svc}.enable && host.arch == 'aarch64'",
            "    set:",
            f'      {svc}.extra_args: !force ["--low-memory", "--port=${{config.{svc}.port}}"]',
        ]
    if k == 6:
        # a shared module reading an anchor host's settings
        a = host_name(0)
        lines += [
            f"  - when: config.{svc}.enable",
            "    set:",
            f'      {svc}.upstream: "${{hosts.\\"{a}\\".deploy.host}}:'
            f'${{hosts.\\"{a}\\".config.services.svc06.port}}"',
        ]
    if k in ROLE_SERVICES:
        lines += [
            f"role: svc{k:02d}",
            f"role_when: config.{svc}.enable",
            "tasks:",
            f"  - name: Configure svc{k:02d}",
            "    ansible.builtin.debug:",
            f'      msg: "svc{k:02d} on {{{{ config.services.svc{k:02d}.port }}}}"',
        ]
    return "\n".join(lines) + "\n"


BASE_MODULE = """\
# Identity and SSH of every host.
options:
  system.hostname: {$ref: "orchestrate:hostname"}
  system.timezone: {type: string, default: UTC}
  system.motd: {type: string, default: ""}
  services.openssh.port: {$ref: "orchestrate:port", default: 22}
  services.openssh.password_authentication: {type: boolean, default: false}
config:
  system.hostname: ${host.name}
  services.openssh.port: ${host.deploy.port}
  system.motd: "${host.name} (${host.arch}, ${host.builder}) in fleet ${fleet.name}"
role: base
tasks:
  - name: Write the message of the day
    ansible.builtin.copy:
      dest: /etc/motd
      content: "{{ config.system.motd }}\\n"
      mode: "0644"
assertions:
  - assert: config.services.openssh.port == host.deploy.port
    message: sshd must listen on the port the fleet deploys through
"""

FIREWALL_MODULE = """\
# Firewall: ports open on every interface.
options:
  networking.firewall.enable: {type: boolean, default: true}
  networking.firewall.allowed_tcp_ports:
    type: array
    items: {$ref: "orchestrate:port"}
    default: []
  networking.firewall.allowed_udp_ports:
    type: array
    items: {$ref: "orchestrate:port"}
    default: []
  networking.firewall.interfaces:
    type: object
    default: {}
    additionalProperties:
      type: object
      additionalProperties: false
      properties:
        allowed_tcp_ports: {type: array, items: {$ref: "orchestrate:port"}}
  networking.firewall.log_refused: {type: boolean, default: false}
config:
  networking.firewall.allowed_tcp_ports: ["${config.services.openssh.port}"]
"""

MONITOR_MODULE = """\
# Monitoring: a monitor host discovers every host that runs svc05.
options:
  monitor.enable: {type: boolean, default: false}
  monitor.port: {$ref: "orchestrate:port", default: 9090}
  monitor.interval: {$ref: "orchestrate:duration", default: 30s}
  monitor.targets: {type: array, items: {type: string}, default: []}
  monitor.job: {type: string, default: svc05}
config:
  - when: config.monitor.enable
    set:
      monitor.targets: ${values(hosts)[?config.services.svc05.enable].deploy.host}
      networking.firewall.allowed_tcp_ports: ["${config.monitor.port}"]
warnings:
  - when: config.monitor.enable && length(config.monitor.targets) == `0`
    message: this monitor has nothing to scrape
"""


def _common_module() -> str:
    imports = ["base.yaml", "firewall.yaml", "monitor.yaml"]
    imports += [f"services/svc{k:02d}.yaml" for k in range(1, SERVICES + 1)]
    lines = ["# Defaults every host imports.", "imports:"]
    lines += [f"  - {p}" for p in imports]
    lines += [
        "options:",
        "  environment.system_packages: {type: array, items: {type: string}, default: []}",
        "  environment.shell_aliases:",
        "    type: object",
        "    default: {}",
        "    additionalProperties: {type: string}",
        "config:",
        "  system.timezone: !default Europe/Berlin",
        "  environment.system_packages: [git, curl, htop]",
        "  environment.shell_aliases: {ll: ls -alF}",
    ]
    return "\n".join(lines) + "\n"


def _hardware_module(arch: str) -> str:
    pkgs = "[linux-image-amd64, intel-microcode]" if arch == "x86_64" else "[linux-image-arm64]"
    return f"# Builder module for {arch}.\nconfig:\n  environment.system_packages: {pkgs}\n"


def _host_module(i: int, n: int, monitors: set[int]) -> str:
    anchor = i % ANCHORS
    if anchor == i:
        anchor = (i + 1) % ANCHORS
    a = host_name(anchor)
    lines = ["# Generated host module.", "config:"]
    for k in range(1, SERVICES + 1):
        if k == 5:
            if i % 2 == 0:
                lines.append("  services.svc05.enable: true")
        elif (i + k) % 3 == 0:
            lines.append(f"  services.svc{k:02d}.enable: true")
    lines.append(f"  services.svc01.port: {20000 + i % 1000}")
    lines.append(f"  services.svc03.listen_address: {address(i)}")
    lines.append(
        f'  services.svc02.upstream: "http://${{hosts.\\"{a}\\".deploy.host}}:'
        f'${{hosts.\\"{a}\\".config.services.svc01.port}}"'
    )
    if i % 7 == 0:
        lines.append("  system.timezone: UTC")
    if i % 11 == 0:
        lines.append("  services.svc07.extra_args: !force [--debug]")
    lines.append(f"  environment.shell_aliases: {{whoami-host: echo {host_name(i)}}}")
    if i in monitors:
        lines.append("  monitor.enable: true")
    return "\n".join(lines) + "\n"


def generate(n: int, root: Path) -> dict[str, Any]:
    """Write a fleet of ``n`` hosts into ``root`` (replacing what was there)."""
    if root.exists():
        shutil.rmtree(root)
    (root / "modules" / "services").mkdir(parents=True)
    (root / "modules" / "hardware").mkdir()
    (root / "hosts").mkdir()
    mods = root / "modules"
    (mods / "common.yaml").write_text(_common_module())
    (mods / "base.yaml").write_text(BASE_MODULE)
    (mods / "firewall.yaml").write_text(FIREWALL_MODULE)
    (mods / "monitor.yaml").write_text(MONITOR_MODULE)
    for k in range(1, SERVICES + 1):
        (mods / "services" / f"svc{k:02d}.yaml").write_text(_service_module(k))
    for arch in ("x86_64", "aarch64"):
        (mods / "hardware" / f"{arch}.yaml").write_text(_hardware_module(arch))

    monitors = set(monitor_indices(n))
    out = [
        f"# Synthetic fleet of {n} hosts, generated by benchmarks/bench_fleet.py.",
        f"name: bench-{n}",
        "channels:",
        "  stable: {suite: bookworm}",
        "  unstable: {suite: trixie}",
        "defaults: [modules/common.yaml]",
        "builders:",
        "  x86_64: {arch: x86_64, modules: [modules/hardware/x86_64.yaml]}",
        "  aarch64: {arch: aarch64, modules: [modules/hardware/aarch64.yaml]}",
        "deploy: {port: 2222}",
        "hosts:",
    ]
    aarch = []
    for i in range(n):
        name = host_name(i)
        builder = "aarch64" if i % 4 == 3 else "x86_64"
        if builder == "aarch64":
            aarch.append(name)
        tags = [TIERS[i % len(TIERS)], f"rack-{i % RACKS:02d}"]
        if i < ANCHORS:
            tags.append("anchor")
        if i in monitors:
            tags.append("monitor")
        out.append(f"  {name}:")
        out.append(f"    builder: {builder}")
        out.append(f"    tags: [{', '.join(tags)}]")
        if i % 10 == 9:
            out.append("    channel: unstable")
        out.append(f"    modules: [hosts/{name}.yaml]")
        out.append(f"    deploy: {{host: {address(i)}}}")
        (root / "hosts" / f"{name}.yaml").write_text(_host_module(i, n, monitors))
    out += ["images:", f"  boards: {{hosts: [{', '.join(aarch[:3])}], format: sd}}"]
    (root / "fleet.yaml").write_text("\n".join(out) + "\n")
    files = sum(1 for _ in root.rglob("*.yaml"))
    return {"hosts": n, "yaml_files": files, "monitors": [host_name(i) for i in sorted(monitors)]}


# --------------------------------------------------------------------------- measuring
def tool(name: str) -> str:
    """The real executable beside this interpreter (skips pyenv shims), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        sys.exit(f"bench_fleet: {name} not found")
    return found


def run_timed(
    cmd: Sequence[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.DEVNULL,
) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS (MiB, via wait4) and exit code."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "cpu": cpu, "rss_mib": usage.ru_maxrss / 1024, "stderr": stderr}


def repeat(runs: int, cmd: Sequence[str], **kw: Any) -> dict[str, Any]:
    results = [run_timed(cmd, **kw) for _ in range(runs)]
    walls = [r["wall"] for r in results]
    out = {
        "runs": runs,
        "walls": [round(w, 3) for w in walls],
        "median": round(statistics.median(walls), 3),
        # user+sys CPU seconds: less sensitive than wall time to other load on the machine
        "cpu_median": round(statistics.median(r["cpu"] for r in results), 3),
        "peak_rss_mib": round(max(r["rss_mib"] for r in results), 1),
        "last_stderr": results[-1]["stderr"].strip().splitlines()[-1:],
    }
    # `orchestrate compile` reports its own time ("... in 1.23s"): the rest is start-up and exit
    reported = [re.search(r" in ([0-9.]+)s$", r["stderr"].strip()) for r in results]
    if all(reported):
        out["reported_median"] = statistics.median(float(m[1]) for m in reported if m)
    return out


def ansible_env(build: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(build / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def first_task(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds until ansible-playbook prints "TASK [" and its first "ok:" line, and in total."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - start
        lines.append(line)
        if "task" not in seen and line.startswith("TASK ["):
            seen["task"] = now
        if "ok" not in seen and line.startswith("ok: ["):
            seen["ok"] = now
    proc.wait()
    total = time.perf_counter() - start
    if proc.returncode != 0 or "task" not in seen:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{''.join(lines)[-3000:]}")
    return {"first_task": seen["task"], "first_ok": seen.get("ok", total), "total": total}


PLAYBOOK = """\
- name: Reach the first task
  hosts: all
  gather_facts: false
  tasks:
    - name: Start
      ansible.builtin.debug:
        msg: start
"""


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    big = n >= args.big
    root = WORK / f"fleet-{n}"
    build = root / ".orchestrate" / "build"
    orch = tool("orchestrate")
    res: dict[str, Any] = {"hosts": n}
    log(f"[{n}] generating {root.relative_to(REPO)}")
    t = time.perf_counter()
    res["fleet"] = generate(n, root)
    res["fleet"]["generate_s"] = round(time.perf_counter() - t, 2)

    runs = args.compile_runs_big if big else args.compile_runs
    log(f"[{n}] compile --full x{runs}")
    res["compile"] = repeat(runs, [orch, "--fleet", str(root), "compile", "--full"])
    log(f"[{n}]   {res['compile']}")
    if args.incremental_runs:
        res["incremental"] = bench_incremental(n, root, orch, args.incremental_runs)
    if args.compile_only:
        return res
    data = json.loads((build / "fleet.json").read_text())
    if len(data["hosts"]) != n:
        raise RuntimeError(f"compiled {len(data['hosts'])} hosts, expected {n}")
    monitor = res["fleet"]["monitors"][0]
    targets = data["hosts"][monitor]["config"]["monitor"]["targets"]
    res["fleet"]["monitor_targets"] = len(targets)
    res["fleet"]["host_vars_files"] = len(os.listdir(build / "inventory" / "host_vars"))
    res["fleet"]["build_mib"] = round(
        sum(p.stat().st_size for p in build.rglob("*") if p.is_file()) / 2**20, 1
    )
    del data

    res["query"] = {}
    for label, expr in (
        ("length", "length(hosts)"),
        ("selective", "values(hosts)[?contains(tags, 'monitor')].config.monitor.port"),
    ):
        log(f"[{n}] query {label} x{args.query_runs}")
        res["query"][label] = repeat(
            args.query_runs, [orch, "--fleet", str(root), "query", expr], stdout=subprocess.DEVNULL
        )
        res["query"][label]["expr"] = expr
    out = subprocess.run(
        [orch, "--fleet", str(root), "query", "length(hosts)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if json.loads(out) != n:
        raise RuntimeError(f"query length(hosts) printed {out!r}, expected {n}")

    env = ansible_env(build)
    inv_runs = args.inventory_runs_big if big else args.inventory_runs
    log(f"[{n}] orchestrate inventory --list x{inv_runs}")
    res["inventory"] = {
        "orchestrate": repeat(inv_runs, [orch, "--fleet", str(root), "inventory", "--list"]),
    }
    log(f"[{n}] ansible-inventory --list x{inv_runs}")
    res["inventory"]["ansible"] = repeat(
        inv_runs,
        [tool("ansible-inventory"), "-i", str(build / "inventory" / "hosts.json"), "--list"],
        cwd=build,
        env=env,
    )
    res["inventory"]["ratio"] = round(
        res["inventory"]["ansible"]["median"] / res["inventory"]["orchestrate"]["median"], 1
    )

    bench = root / "bench"
    bench.mkdir(exist_ok=True)
    (bench / "first-task.yml").write_text(PLAYBOOK)
    limit = host_name(n // 2 + 1)
    cmd = [
        tool("ansible-playbook"),
        "-i",
        str(build / "inventory" / "hosts.json"),
        "--limit",
        limit,
        "-c",
        "local",
        str(bench / "first-task.yml"),
    ]
    log(f"[{n}] ansible-playbook --limit {limit} x{args.playbook_runs}")
    samples = [first_task(cmd, build, env) for _ in range(args.playbook_runs)]
    res["playbook"] = {
        "runs": len(samples),
        "limit": limit,
        **{
            k: round(statistics.median(s[k] for s in samples), 3)
            for k in ("first_task", "first_ok", "total")
        },
        "samples": [{k: round(v, 3) for k, v in s.items()} for s in samples],
    }
    return res


def bench_incremental(n: int, root: Path, orch: str, runs: int) -> dict[str, Any]:
    """`orchestrate compile` after an edit of one host's own file (a host nobody reads), and
    after an edit of a value a quarter of the hosts read (anchor host-00001's port), ``runs``
    of each, interleaved; then the build is compared with a full compile's, file by file."""
    edits = {"one_host": host_name(n // 2 + 3), "widely_read": host_name(1)}
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in edits}
    for r in range(runs):
        for label, host in edits.items():
            path = root / "hosts" / f"{host}.yaml"
            text = re.sub(r"svc01\.port: \d+", f"svc01.port: {30000 + r}", path.read_text())
            path.write_text(text)
            log(f"[{n}] incremental compile after an edit of {host} ({label})")
            done = run_timed([orch, "--fleet", str(root), "compile"])
            found = re.search(r"\((\d+) evaluated again\)", done["stderr"])
            done["evaluated"] = int(found[1]) if found else None  # None: a full compile
            samples[label].append(done)
    out: dict[str, Any] = {"runs": runs}
    for label, found in samples.items():
        out[label] = {
            "host": edits[label],
            "walls": [round(d["wall"], 3) for d in found],
            "median": round(statistics.median(d["wall"] for d in found), 3),
            "cpu_median": round(statistics.median(d["cpu"] for d in found), 3),
            "peak_rss_mib": round(max(d["rss_mib"] for d in found), 1),
            "evaluated": [d["evaluated"] for d in found],
        }
        log(f"[{n}]   {label}: {out[label]}")
    full = root / "bench" / "full-build"
    log(f"[{n}] compile --full --out {full.relative_to(REPO)}, to compare")
    run_timed([orch, "--fleet", str(root), "compile", "--full", "--out", str(full)])
    out["identical_to_full"] = same_files(root / ".orchestrate" / "build", full)
    if not out["identical_to_full"]:
        raise RuntimeError(f"the incremental build differs from the full compile's in {full}")
    return out


def same_files(a: Path, b: Path) -> bool:
    """Whether the two folders hold the same files with the same bytes."""
    names = [{p.relative_to(d) for p in d.rglob("*") if p.is_file()} for d in (a, b)]
    if names[0] != names[1]:
        return False
    return all((a / p).read_bytes() == (b / p).read_bytes() for p in names[0])


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reporting
def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    n = res["hosts"]
    out = []

    def check(name: str, value: float, ok: bool, target: str) -> None:
        out.append({"target": name, "value": value, "limit": target, "pass": ok})

    inc = res.get("incremental")
    if n == TARGET_SIZE and inc:
        one = inc["one_host"]["median"]
        check("incremental compile, one-host edit (s)", one, one < INCREMENTAL_LIMIT, "< 0.5 s")
    if "query" not in res:
        return out  # --compile-only
    if n == TARGET_SIZE:
        c = res["compile"]
        check("compile time (s)", c["median"], c["median"] < COMPILE_TIME_LIMIT, "< 30 s")
        check(
            "compile peak RSS (MiB)",
            c["peak_rss_mib"],
            c["peak_rss_mib"] < COMPILE_RSS_LIMIT_MIB,
            "< 2048 MiB",
        )
        for label, q in res["query"].items():
            check(f"query {label} (s)", q["median"], q["median"] < QUERY_LIMIT, "< 1 s")
    ratio = res["inventory"]["ratio"]
    check("inventory speed-up (x)", ratio, ratio >= INVENTORY_RATIO_MIN, ">= 10x")
    ft = res["playbook"]["first_task"]
    check("playbook first task (s)", ft, ft < FIRST_TASK_LIMIT, "< 10 s")
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get: Any) -> None:
        rows.append((label, [get(r) for r in results]))

    row("load average before/after", lambda r: "{:.1f}/{:.1f}".format(*r["loadavg_1m"]))
    row("YAML files generated", lambda r: str(r["fleet"]["yaml_files"]))
    row("compile runs", lambda r: str(r["compile"]["runs"]))
    row("compile wall, median (s)", lambda r: f"{r['compile']['median']:.2f}")
    row(
        "compile as reported by orchestrate (s)",
        lambda r: f"{r['compile'].get('reported_median', float('nan')):.2f}",
    )
    row("compile peak RSS (MiB)", lambda r: f"{r['compile']['peak_rss_mib']:.0f}")
    for label in ("one_host", "widely_read"):
        row(f"incremental, {label.replace('_', ' ')} edit (s)", _incremental(label, "median"))
        row("  its CPU (s)", _incremental(label, "cpu_median"))
        row("  hosts evaluated again", _incremental(label, "evaluated"))
    if any("query" not in r for r in results):  # --compile-only
        return _lines(results, rows)
    row("build size (MiB)", lambda r: f"{r['fleet']['build_mib']:.1f}")
    row("query length(hosts), median (s)", lambda r: f"{r['query']['length']['median']:.3f}")
    row("query selective, median (s)", lambda r: f"{r['query']['selective']['median']:.3f}")
    row("inventory runs", lambda r: str(r["inventory"]["orchestrate"]["runs"]))
    row(
        "orchestrate inventory --list (s)",
        lambda r: f"{r['inventory']['orchestrate']['median']:.3f}",
    )
    row("ansible-inventory --list (s)", lambda r: f"{r['inventory']['ansible']['median']:.3f}")
    row("inventory ratio (ansible/orch)", lambda r: f"{r['inventory']['ratio']:.1f}x")
    row(
        "ansible-inventory peak RSS (MiB)",
        lambda r: f"{r['inventory']['ansible']['peak_rss_mib']:.0f}",
    )
    row("playbook runs", lambda r: str(r["playbook"]["runs"]))
    row("playbook to 'TASK [' (s)", lambda r: f"{r['playbook']['first_task']:.2f}")
    row("playbook to first 'ok:' (s)", lambda r: f"{r['playbook']['first_ok']:.2f}")
    row("playbook total (s)", lambda r: f"{r['playbook']['total']:.2f}")
    return _lines(results, rows)


def _incremental(label: str, key: str) -> Any:
    def get(r: dict[str, Any]) -> str:
        found = r.get("incremental", {}).get(label)
        if found is None:
            return "-"
        value = found[key]
        return "/".join(map(str, value)) if isinstance(value, list) else f"{value:.3f}"

    return get


def _lines(results: list[dict[str, Any]], rows: list[tuple[str, list[str]]]) -> str:
    sizes = [r["hosts"] for r in results]
    head = ["measurement (median)", *[f"{n} hosts" for n in sizes]]
    width = max(len(label) for label, _ in rows) + 2
    column = max(14, *(len(v) + 2 for _label, values in rows for v in values))
    lines = [head[0].ljust(width) + "".join(h.rjust(column) for h in head[1:])]
    lines.append("-" * len(lines[0]))
    for label, values in rows:
        lines.append(label.ljust(width) + "".join(v.rjust(column) for v in values))
    lines.append("")
    lines.append("targets:")
    for r in results:
        for v in r["verdicts"]:
            mark = "PASS" if v["pass"] else "FAIL"
            lines.append(
                f"  {mark}  {r['hosts']:>6} hosts  {v['target']}: {v['value']} ({v['limit']})"
            )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    mem_kib = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    ansible = subprocess.run(
        [tool("ansible"), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    orch = subprocess.run(
        [tool("orchestrate"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    # the orchestrator package the children import (PYTHONPATH may point at another checkout)
    found = subprocess.run(
        [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=WORK,
    ).stdout.strip()
    package = os.path.dirname(os.path.dirname(found))
    git = ["git", "-C", package]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "orchestrator"], capture_output=True, text=True
    )
    return {
        "orchestrator": package,
        "commit": commit.stdout.strip() + (" (orchestrator/ modified)" if dirty.stdout else ""),
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "ansible": ansible[0] if ansible else "?",
        "orchestrate": orch,
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000], metavar="N")
    p.add_argument("--compile-runs", type=int, default=3)
    p.add_argument("--query-runs", type=int, default=5)
    p.add_argument("--inventory-runs", type=int, default=5)
    p.add_argument("--playbook-runs", type=int, default=3)
    p.add_argument("--big", type=int, default=5000, help="sizes from here on use the *-big runs")
    p.add_argument("--compile-runs-big", type=int, default=2)
    p.add_argument("--inventory-runs-big", type=int, default=3)
    p.add_argument("--incremental-runs", type=int, default=3, help="of each edit (0: none)")
    p.add_argument(
        "--compile-only", action="store_true", help="no queries, inventories or playbooks"
    )
    p.add_argument("--out", type=Path, default=WORK / "results.json")
    args = p.parse_args(argv)

    WORK.mkdir(exist_ok=True)
    info = machine()  # before the runs: the commit measured
    started = time.perf_counter()
    results = []
    for n in args.hosts:
        load_before = os.getloadavg()[0]
        res = bench_size(n, args)
        # other work on the machine skews every number: keep the 1-minute load average
        res["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        res["verdicts"] = verdicts(res)
        results.append(res)
    doc = {
        "command": " ".join(["python3", "benchmarks/bench_fleet.py", *(argv or sys.argv[1:])]),
        "machine": info,
        "duration_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(table(results))
    print(f"\nwritten {args.out} in {doc['duration_s']} s")
    return 1 if any(not v["pass"] for r in results for v in r["verdicts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
