"""Which disk images a fleet's `images:` entries make: one per host of an entry, with its
architecture, format, suite and output file. Sits after evaluation; the builder consumes it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import FleetErrors, Problem, UsageError
from orchestrator.evaluator.fleet import Evaluation
from orchestrator.naming import DEBIAN_ARCH
from orchestrator.paths import state_dir

# format -> the architectures it is made for (the seed: libvirt VMs on x86_64, SD cards for
# aarch64 boards) and the file extension
FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "qcow2": (("x86_64",), "qcow2"),
    "raw": (("x86_64",), "raw"),
    "sd": (("aarch64",), "img"),
}
DEFAULT_SIZE = {"qcow2": "2G", "raw": "2G", "sd": "2G"}
BOOT_MIB = {"qcow2": 128, "raw": 128, "sd": 256}
# What every image carries before the host's roles run: an init, name resolution for the
# addresses DHCP gives (systemd-resolved), sshd, python3 for Ansible, and the format's kernel and
# boot loader (UEFI systemd-boot) or board firmware.
COMMON_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "systemd-resolved",
    "iproute2",
    "zstd",
    "python3",
    "python3-apt",
    "sudo",
)
FORMAT_PACKAGES = {
    "qcow2": ("linux-image-amd64", "systemd-boot-efi"),
    "raw": ("linux-image-amd64", "systemd-boot-efi"),
    "sd": ("linux-image-arm64", "raspi-firmware"),
}
FORMAT_COMPONENTS = {"qcow2": ("main",), "raw": ("main",), "sd": ("main", "non-free-firmware")}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIN_ROOT_MIB = 768  # a bootable Debian with sshd and python3 takes ~650 MiB
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
    mirror: str = DEFAULT_MIRROR

    @property
    def debian_arch(self) -> str:
        return DEBIAN_ARCH[self.arch]

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(sorted(COMMON_PACKAGES + FORMAT_PACKAGES[self.format]))

    @property
    def components(self) -> tuple[str, ...]:
        return FORMAT_COMPONENTS[self.format]

    @property
    def size_mib(self) -> int:
        number, unit = int(self.size[:-1]), self.size[-1]
        return number * (1024 if unit == "G" else 1)

    @property
    def boot_mib(self) -> int:
        return BOOT_MIB[self.format]

    @property
    def root_mib(self) -> int:
        # the first MiBs hold the partition table (4 MiB before an SD card's first partition)
        return self.size_mib - self.boot_mib - 4


def images_dir(root: str) -> str:
    return os.path.join(state_dir(root), "images")


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
            planned = HostImage(
                image=name,
                host=host,
                arch=info["arch"],
                format=spec.format,
                suite=_suite(ev),
                size=spec.size or DEFAULT_SIZE[spec.format],
                include_host_key=spec.include_host_key,
                build_on=str(info["deploy"]["build_on"]),
                file=f"{name}/{host}.{ext}",
                mirror=_mirror(ev.hosts[host].config),
            )
            if planned.root_mib < MIN_ROOT_MIB:
                problems.append(
                    Problem(
                        spec.loc,
                        f"image {name!r}: size {planned.size} leaves {planned.root_mib} MiB for "
                        f"the root filesystem after the {planned.boot_mib} MiB boot partition; "
                        f"give at least {MIN_ROOT_MIB + planned.boot_mib + 4}M",
                    )
                )
                continue
            out.append(planned)
    if problems:
        raise FleetErrors(problems)
    return out


def _mirror(config: dict[str, Any]) -> str:
    env = config.get("environment")
    mirror = env.get("mirror") if isinstance(env, dict) else None
    return str(mirror) if mirror else DEFAULT_MIRROR


def _suite(ev: Evaluation) -> str:
    return str(ev.spec.channels["stable"]["suite"])


def load_manifest(out: str, image: str) -> dict[str, Any]:
    """What was built for one image entry: host -> {file, sha256, inputs}; empty before its
    first build (or when the manifest cannot be read: the image is then rebuilt)."""
    try:
        with open(os.path.join(out, image, MANIFEST), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    hosts = data.get("hosts", {}) if isinstance(data, dict) else {}
    return hosts if isinstance(hosts, dict) else {}


def image_rows(ev: Evaluation, out: str) -> list[dict[str, Any]]:
    """What `image list` shows: every planned image file, with the sha256 of its build when
    the file is in ``out`` (None when it is not built)."""
    rows = []
    for i in plan_images(ev):
        sha = str(load_manifest(out, i.image).get(i.host, {}).get("sha256", ""))
        if sha and not os.path.exists(os.path.join(out, i.file)):
            sha = ""
        rows.append({**asdict(i), "sha256": sha or None})
    return rows


__all__ = ["FORMATS", "HostImage", "image_rows", "images_dir", "load_manifest", "plan_images"]
