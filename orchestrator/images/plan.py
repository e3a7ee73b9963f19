"""Which disk images a fleet's `images:` entries make: one per host of an entry, with its
architecture, format, suite and output file. Sits after evaluation; the builder consumes it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import FleetErrors, Problem, UsageError
from orchestrator.evaluator.fleet import Evaluation

# format -> the architectures it is made for (the seed: libvirt VMs on x86_64, SD cards for
# aarch64 boards) and the file extension
FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "qcow2": (("x86_64",), "qcow2"),
    "raw": (("x86_64",), "img"),
    "sd": (("aarch64",), "img"),
}
DEFAULT_SIZE = {"qcow2": "2G", "raw": "2G", "sd": "2G"}
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class HostImage:
    """One image file to build: ``image`` entry, ``host`` whose configuration it carries."""

    image: str
    host: str
    arch: str
    format: str
    suite: str
    size: str
    include_host_key: bool
    build_on: str
    file: str  # relative to the images folder


def images_dir(root: str) -> str:
    return os.path.join(root, ".orchestrate", "images")


def plan_images(ev: Evaluation, names: list[str] | None = None) -> list[HostImage]:
    """The images to build for the entries ``names`` (every entry when None), checked: an
    unknown name is a usage error, a format that does not fit a host's architecture is a
    problem located at the entry."""
    entries = ev.spec.images
    unknown = [n for n in names or [] if n not in entries]
    if unknown:
        known = ", ".join(sorted(entries)) or "none"
        raise UsageError(f"unknown image(s): {', '.join(unknown)} (the fleet has: {known})")
    problems: list[Problem] = []
    out = []
    for name in sorted(names or entries):
        spec = entries[name]
        arches, ext = FORMATS[spec.format]
        for host in spec.hosts:
            info = ev.hosts[host].info
            if info["arch"] not in arches:
                problems.append(
                    Problem(
                        spec.loc,
                        f"image {name!r}: {spec.format} images are made for "
                        f"{' or '.join(arches)} hosts; {host} is {info['arch']}",
                    )
                )
                continue
            out.append(
                HostImage(
                    image=name,
                    host=host,
                    arch=info["arch"],
                    format=spec.format,
                    suite=_suite(ev),
                    size=spec.size or DEFAULT_SIZE[spec.format],
                    include_host_key=spec.include_host_key,
                    build_on=str(info["deploy"]["build_on"]),
                    file=f"{name}/{host}.{ext}",
                )
            )
    if problems:
        raise FleetErrors(problems)
    return out


def _suite(ev: Evaluation) -> str:
    return str(ev.spec.channels["stable"]["suite"])


def load_manifest(root: str) -> dict[str, Any]:
    """What was built: file -> {sha256, inputs, ...}; empty before the first build."""
    try:
        with open(os.path.join(images_dir(root), MANIFEST), encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    images = data.get("images", {})
    return images if isinstance(images, dict) else {}


__all__ = ["FORMATS", "HostImage", "images_dir", "load_manifest", "plan_images"]
