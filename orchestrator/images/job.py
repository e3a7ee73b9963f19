"""One host image's build as a value, made before its first stage runs: where its files go on
this machine, the variables the image_builder role runs with, and the remote build host's
connection. The stages only read it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from orchestrator.images.cache import Tarballs
from orchestrator.images.plan import HostImage

REMOTE_WORK = "/var/tmp/orchestrate-images"  # on a remote build host: per-image work folders
REMOTE_CACHE = "/var/cache/orchestrate/images"  # and its cache
ID_NAMESPACE = uuid.UUID("6f0e3c52-5d1a-4b8e-9f27-0c7a1e2d4b60")


def builds_remotely(img: HostImage) -> bool:
    return img.build_on == "remote"


def image_ids(fleet: str, img: HostImage) -> dict[str, str]:
    """Fixed identifiers for the disk (same inputs, same bytes), distinct per image and host."""

    def uid(part: str) -> uuid.UUID:
        return uuid.uuid5(ID_NAMESPACE, f"{fleet}/{img.image}/{img.host}/{part}")

    if img.format == "sd":
        label = uid("disk").hex[:8]
        return {
            "disk": label,
            "boot_part": f"{label}-01",
            "root_part": f"{label}-02",
            "root_fs": str(uid("rootfs")),
            "boot_serial": uid("boot").hex[:8].upper(),
        }
    return {
        "disk": str(uid("disk")),
        "boot_part": str(uid("esp")),
        "root_part": str(uid("root")),
        "root_fs": str(uid("rootfs")),
        "boot_serial": uid("boot").hex[:8].upper(),
    }


@dataclass(frozen=True)
class Batch:
    """What every image of one `image build` shares: the compiled build and its data, the
    output folder, the dates and the image builder role's digest."""

    build_dir: str
    fleet: dict[str, Any]
    out: str
    epoch: int
    builder_digest: str


@dataclass(frozen=True)
class HostInputs:
    """What is gathered for a host before any build starts, so that a missing key or an
    unreachable build host fails the command before the first image: the host's age key (only
    with include_host_key), its remote build host's connection (None: this machine builds it),
    and the variables the secrets role needs in the image."""

    host_key: str | None
    remote: dict[str, Any] | None
    host_vars: dict[str, Any]


@dataclass(frozen=True)
class Job:
    """One host image's build: where its runs keep their files here, the builder's variables,
    and the remote build host's connection (None: this machine builds it)."""

    build_dir: str
    work: str
    variables: dict[str, Any]
    img: HostImage
    remote: dict[str, Any] | None
    host_vars: dict[str, Any]  # for the host's roles: the sops binary of a host with secrets


def make_job(
    batch: Batch, img: HostImage, inputs: HostInputs, tars: Tarballs, work: str, partial: str
) -> Job:
    """The build of ``img`` that works in ``work`` here and writes its file at ``partial``."""
    remote = inputs.remote is not None
    # where the builder works: here, or on the remote build host (its own paths and cache)
    bwork = f"{REMOTE_WORK}/{img.image}/{img.host}" if remote else work
    bcache = REMOTE_CACHE if remote else tars.folder
    variables = _variables(batch, img, tars, bwork, bcache) | {
        "image_builder_output": partial,
        "image_builder_host_key": inputs.host_key or "",
        # unique per build: two builds on one host never share a network namespace
        "image_builder_netns": f"orchestrate-image-{uuid.uuid4().hex[:12]}",
    }
    if remote:
        variables.update(_remote_variables(img, tars, bwork, partial))
    return Job(batch.build_dir, work, variables, img, inputs.remote, inputs.host_vars)


def _variables(
    batch: Batch, img: HostImage, tars: Tarballs, bwork: str, bcache: str
) -> dict[str, Any]:
    """What the disk is made of and where the builder works, wherever it works."""
    return {
        "image_builder_root": f"{bwork}/root",
        "image_builder_work": bwork,
        "image_builder_cache": bcache,
        "image_builder_arch": img.debian_arch,
        "image_builder_suite": img.suite,
        "image_builder_mirror": img.mirror,
        "image_builder_components": list(img.components),
        "image_builder_packages": list(img.packages),
        "image_builder_base_tar": f"{bcache}/{tars.base_name}",
        "image_builder_installed_tar": f"{bcache}/{tars.installed_name}",
        "image_builder_epoch": batch.epoch,
        "image_builder_hostname": img.host,
        "image_builder_format": img.format,
        "image_builder_ids": image_ids(str(batch.fleet["fleet"]["name"]), img),
        "image_builder_boot_mib": img.boot_mib,
        "image_builder_root_mib": img.root_mib,
    }


def _remote_variables(img: HostImage, tars: Tarballs, bwork: str, partial: str) -> dict[str, Any]:
    """A remote build host installs its own tools, starts from this machine's cached tarball
    when there is one (same name, same inputs), and the disk comes back here to ``partial``."""
    local = tars.seed()
    seed = [{"src": local, "dest": f"{REMOTE_CACHE}/{os.path.basename(local)}"}] if local else []
    return {
        "image_builder_remote": True,
        "image_builder_tools": f"{bwork}/tools",
        "image_builder_seed": seed,
        "image_builder_output": f"{bwork}/{os.path.basename(img.file)}",
        "image_builder_fetch_to": partial,
    }


__all__ = ["Batch", "HostInputs", "Job", "builds_remotely", "image_ids", "make_job"]
