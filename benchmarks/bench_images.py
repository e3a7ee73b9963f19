#!/usr/bin/env python3
"""Cold and warm image builds, per format.

    python3 benchmarks/bench_images.py --image linda-vm=LINDA:qcow2 --image pi-cards=pi-1 \\
        --warm 3

Works on a copy of the fleet (default: the bundled one). An `--image NAME=HOST[:FORMAT]` whose
entry the fleet lacks is added (so a host without secrets can be built as a VM). For each image:

- cold: an empty cache (XDG_CACHE_HOME pointed at a new folder): debootstrap, package
  installation, the host's roles, the disk;
- warm: the same cache, after a configuration change each time (a new shell alias for every
  host): the bootstrap and installation come from the cache, the roles and the disk are redone.

Prints each run's stage times (from the build's own progress lines) and, per image, the warm
median and the cold/warm ratio, as a Markdown table.

    python3 benchmarks/bench_images.py --remote linda-vm=LINDA:qcow2 --warm 2

`--remote` compares, in one run, where an image is built: here (warm cache) and on the host
itself (deploy.build_on: remote, its testbed container over SSH): first with an empty remote
cache that this machine's seeds, then warm there too. Each after a configuration change."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"^  (prepare|roles|finish): done in (\d+)s$", re.M)


def build(fleet: Path, name: str, host: str, out: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(fleet), "image", "build",
           name, "--limit", host, "--out", str(out)]  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    total = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"build failed:\n{r.stderr[-3000:]}")
    stages = {k: float(v) for k, v in STAGE.findall(r.stderr)}
    return {"total": total, **stages}


def change_config(fleet: Path, n: int) -> None:
    """A configuration change every host sees: one more shell alias, in a defaults module."""
    module = fleet / "bench-change.yaml"
    module.write_text(f"config:\n  environment.shell_aliases: {{bench{n}: 'true'}}\n")
    text = (fleet / "fleet.yaml").read_text()
    if "bench-change.yaml" not in text:
        text = text.replace("defaults:\n", "defaults:\n  - bench-change.yaml\n", 1)
        (fleet / "fleet.yaml").write_text(text)


def add_entry(fleet: Path, spec: str) -> tuple[str, str]:
    name, _, rest = spec.partition("=")
    host, _, fmt = rest.partition(":")
    if fmt:
        with (fleet / "fleet.yaml").open("a") as fh:
            fh.write(f"  {name}: {{hosts: [{host}], format: {fmt}}}\n")
    return name, host


def orchestrate(fleet: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(fleet), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")


def set_build_on(fleet: Path, host: str, where: str) -> None:
    """Set the host's deploy.build_on in fleet.yaml (its `deploy: {...}` line, or a new one)."""
    lines = (fleet / "fleet.yaml").read_text().split("\n")
    start = lines.index(f"  {host}:")
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):
        end += 1
    body = [
        ln.replace("build_on: local, ", "").replace("build_on: remote, ", "")
        for ln in lines[start + 1 : end]
    ]
    for i, ln in enumerate(body):
        if ln.strip().startswith("deploy: {"):
            body[i] = ln.replace("deploy: {", f"deploy: {{build_on: {where}, ", 1)
            break
    else:
        body.append(f"    deploy: {{build_on: {where}}}")
    lines[start + 1 : end] = body
    (fleet / "fleet.yaml").write_text("\n".join(lines))


def remote(fleet: Path, work: Path, spec: str, warm: int) -> None:
    """Local (warm) against remote builds of one image, after a configuration change each."""
    name, host = add_entry(fleet, spec)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out = work / "out"
    runs: list[tuple[str, dict[str, float]]] = []
    print(f"{name}/{host}: local, to warm this machine's cache ...", file=sys.stderr, flush=True)
    build(fleet, name, host, out, cache)
    set_build_on(fleet, host, "remote")  # its testbed container is then a build host
    orchestrate(fleet, "testbed", "up", "--hosts", host)
    try:
        n = 0
        for where, label, times in (
            ("local", "local, warm", warm),
            ("remote", "remote, seeded from here", 1),
            ("remote", "remote, warm", warm),
        ):
            set_build_on(fleet, host, where)
            for _ in range(times):
                change_config(fleet, n)
                n += 1
                print(f"{name}/{host}: {label} ...", file=sys.stderr, flush=True)
                runs.append((label, build(fleet, name, host, out, cache)))
    finally:
        orchestrate(fleet, "testbed", "down")
    print("| build host | runs | total (median) | prepare | roles | finish |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in dict.fromkeys(lb for lb, _ in runs):
        mine = [r for lb, r in runs if lb == label]
        med = {k: statistics.median(r.get(k, 0) for r in mine) for k in mine[0]}
        print(
            f"| {label} | {len(mine)} | {med['total']:.0f} s | {med.get('prepare', 0):.0f} s | "
            f"{med.get('roles', 0):.0f} s | {med.get('finish', 0):.0f} s |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default=str(REPO / "inventory"))
    ap.add_argument("--image", action="append", default=[], metavar="NAME=HOST[:FORMAT]")
    ap.add_argument("--remote", metavar="NAME=HOST[:FORMAT]", help="local against remote builds")
    ap.add_argument("--warm", type=int, default=3, help="warm runs per image (3)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    fleet = work / "fleet"
    shutil.copytree(args.fleet, fleet, ignore=shutil.ignore_patterns(".orchestrate"))
    if args.remote:
        try:
            remote(fleet, work, args.remote, args.warm)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    print(f"| image | host | cold | warm (median of {args.warm}) | cold / warm |")
    print("|---|---|---|---|---|", flush=True)
    try:
        for spec in args.image:
            name, host = add_entry(fleet, spec)
            cache = work / f"cache-{name}"
            print(f"{name}/{host}: cold ...", file=sys.stderr, flush=True)
            cold = build(fleet, name, host, work / "out", cache)
            warm = []
            for i in range(args.warm):
                change_config(fleet, i)
                print(f"{name}/{host}: warm {i + 1} ...", file=sys.stderr, flush=True)
                warm.append(build(fleet, name, host, work / "out", cache))
            med = statistics.median(w["total"] for w in warm)
            ratio = cold["total"] / med
            print(
                f"| {name} | {host} | {cold['total']:.0f} s | {med:.0f} s | {ratio:.1f}x |",
                flush=True,
            )
            runs = [("cold", cold)] + [(f"warm {i + 1}", w) for i, w in enumerate(warm)]
            for label, run in runs:
                print(
                    f"  {label}: {run['total']:.0f}s (prepare {run.get('prepare', 0):.0f}s, "
                    f"roles {run.get('roles', 0):.0f}s, finish {run.get('finish', 0):.0f}s)",
                    file=sys.stderr,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
