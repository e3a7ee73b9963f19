"""`orchestrate image build`: one disk image per host of an `images:` entry, made by the shipped
image_builder role on the build host and the host's own roles applied offline in between.

Per host image, three ansible-runner runs: playbooks/image.yml `prepare` (bootstrap and package
installation, each cached as a tarball keyed by its inputs; identity files; the build network),
the compiled site.yml limited to the host through an isolated chroot (its own roles, as an apply
would run them), playbooks/image.yml `finish` (initramfs, normalisation, file systems, partition
table, qcow2). The build host is this machine, or with `deploy.build_on: remote` the host itself
over SSH: the same three runs go there, and the disk file comes back. The image is written under
a temporary name and renamed, with its manifest, only when every stage succeeded: a failed build
leaves the previous image and manifest as they were.

This file runs a batch of builds; its parts are images/cache.py (the cached tarballs),
images/job.py (one image's build as a value), images/stages.py (the runs) and
images/manifest.py (the record of what was built)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.compiler.unsafe import plain_json
from orchestrator.digest import file_digest
from orchestrator.errors import UsageError
from orchestrator.executor.lock import FleetLock
from orchestrator.fsutil import atomic_output, partial_name
from orchestrator.images.cache import cache_dir, cache_keys, tarballs, tree_digest
from orchestrator.images.job import Batch, HostInputs, Job, builds_remotely, image_ids, make_job
from orchestrator.images.manifest import record_image
from orchestrator.images.plan import HostImage
from orchestrator.images.stages import (
    BUILDER_ROLE,
    BuildFailed,
    BuildInterrupted,
    clean_up,
    run_stages,
)

Progress = Callable[[str], None]
DEFAULT_EPOCH = 1735689600  # 2025-01-01T00:00:00Z, when SOURCE_DATE_EPOCH is not set
TOOLS = (
    "debootstrap",
    "mke2fs",
    "debugfs",
    "e2fsck",
    "sfdisk",
    "mkfs.vfat",
    "fsck.vfat",
    "mcopy",
    "mmd",
    "qemu-img",
    "unshare",
    "chroot",
    "tar",
    "systemctl",
    "slirp4netns",
    "nsenter",
    "ip",
)


@dataclass(frozen=True)
class Built:
    image: HostImage
    path: str
    sha256: str
    seconds: float
    cached: list[str]  # the stages served from the cache


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw:
        return DEFAULT_EPOCH
    if not raw.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be seconds since 1970, not {raw!r}")
    return int(raw)


def check_build_host(images: list[HostImage]) -> None:
    """Everything a build needs on this machine, before anything is written. Images built on
    their remote host (deploy.build_on: remote) need nothing here: the builder installs its
    tools there."""
    images = [i for i in images if not builds_remotely(i)]
    if not images:
        return
    problems = []
    if os.geteuid() != 0:
        problems.append("image builds run as root (debootstrap, chroot, file ownership)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        problems.append(
            f"missing tools: {', '.join(missing)} (Debian: apt-get install debootstrap "
            "e2fsprogs fdisk dosfstools mtools qemu-utils util-linux)"
        )
    machine = platform.machine()
    for arch in sorted({i.arch for i in images}):
        if arch != machine and not os.path.exists(f"/proc/sys/fs/binfmt_misc/qemu-{arch}"):
            problems.append(
                f"{arch} images on this {machine} machine need qemu-user emulation "
                "(apt-get install qemu-user-static binfmt-support)"
            )
    if importlib.util.find_spec("ansible_collections.community.general") is None:
        problems.append(
            "the chroot connection (community.general) is missing: "
            "pip install 'orchestrate[images]'"
        )
    if problems:
        raise UsageError("cannot build images here:\n  " + "\n  ".join(problems))


def build_images(
    root: str,
    build_dir: str,
    fleet: dict[str, Any],
    images: list[HostImage],
    out: str,
    progress: Progress,
    cancelled: threading.Event | None = None,
) -> list[Built]:
    """Build ``images`` (already planned and checked) from the compiled ``build_dir``."""
    from orchestrator.paths import shipped_roles_dir

    check_build_host(images)
    epoch = source_date_epoch()
    inputs = _host_inputs(root, build_dir, fleet, images, progress)
    cancelled = cancelled or threading.Event()
    builder_digest = tree_digest(os.path.join(shipped_roles_dir(), BUILDER_ROLE))
    batch = Batch(build_dir, fleet, out, epoch, builder_digest)
    results = []
    # one build at a time per output folder: builds share its work folder and manifests
    with FleetLock(out, "image build"):
        for n, img in enumerate(images, 1):
            progress(f"[{n}/{len(images)}] {img.file}: {img.host}, {img.arch}, {img.format}")
            results.append(
                _build_one(batch, img, inputs[(img.image, img.host)], progress, cancelled)
            )
    return results


def _host_inputs(
    root: str, build_dir: str, fleet: dict[str, Any], images: list[HostImage], progress: Progress
) -> dict[tuple[str, str], HostInputs]:
    """Per (image, host): what its build needs from the fleet's state, every one gathered
    before the first build starts."""
    host_keys = {(i.image, i.host): _host_key(root, i) for i in images}
    remotes = {
        i.host: remote_connection(root, build_dir, i.host) for i in images if builds_remotely(i)
    }
    secret_vars = _secrets_vars(root, fleet, images, progress)
    return {
        key: HostInputs(host_key, remotes.get(key[1]), secret_vars.get(key[1], {}))
        for key, host_key in host_keys.items()
    }


def _secrets_vars(
    root: str, fleet: dict[str, Any], images: list[HostImage], progress: Progress
) -> dict[str, dict[str, Any]]:
    """What the secrets role needs in an image: the sops binary for the host's architecture. A
    key waiting for its first apply is not among them; the image builder installs it, and only
    for an entry with include_host_key."""
    from orchestrator.executor.connection import secrets_overrides

    found = secrets_overrides(root, fleet, sorted({i.host for i in images}), progress)
    return {
        h: {k: v for k, v in values.items() if k != "orchestrate_pending_key"}
        for h, values in found.items()
    }


def remote_connection(root: str, build_dir: str, host: str) -> dict[str, Any]:
    """How to reach ``host`` as a build host: its compiled connection variables, or its testbed
    container's while a testbed is up. The builder works as root (debootstrap, chroot, file
    ownership), so it logs in as root."""
    from orchestrator.executor.connection import connection_overrides

    path = os.path.join(build_dir, "inventory", "host_vars", f"{host}.json")
    with open(path, encoding="utf-8") as fh:
        conn = {k: v for k, v in plain_json(json.load(fh)).items() if k.startswith("ansible_")}
    conn.update(connection_overrides(root, [host]).get(host, {}))
    user = str(conn.get("ansible_user", "root"))
    if user != "root":
        raise UsageError(
            f"{host} builds its image itself (deploy.build_on: remote) and logs in as {user}: "
            "a remote build host is reached as root (set deploy.user: root), or build the image "
            "here with build_on: local"
        )
    # root already: no sudo (the inventory's become is for a deploy user's runs)
    return {**conn, "ansible_become": False, "ansible_python_interpreter": "/usr/bin/python3"}


def _build_one(
    batch: Batch, img: HostImage, inputs: HostInputs, progress: Progress, cancelled: threading.Event
) -> Built:
    started = time.monotonic()
    tars = tarballs(img, cache_dir())
    progress(_cache_note(img, inputs.remote, tars.cached))
    final = os.path.join(batch.out, img.file)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = os.path.join(batch.out, ".work", img.image, img.host)
    with _work_folder(work):
        job = make_job(batch, img, inputs, tars, work, partial_name(final))
        # a failed or stopped build leaves the previous image as it was, and nothing behind
        with _cleaned_up_on_failure(job, progress), atomic_output(final) as partial:
            run_stages(job, progress, cancelled)
            sha = file_digest(partial)
    record_image(batch, img, sha, tars)
    seconds = time.monotonic() - started
    progress(f"  {img.file}: sha256 {sha[:16]}..., {seconds:.0f}s")
    return Built(img, final, sha, seconds, list(tars.cached))


def _cache_note(img: HostImage, remote: dict[str, Any] | None, cached: tuple[str, ...]) -> str:
    if remote is not None:
        return (
            f"  building on {img.host} itself (deploy.build_on: remote, "
            f"{remote.get('ansible_host', img.host)})"
            + (f"; this machine's cache seeds it: {', '.join(cached)}" if cached else "")
        )
    return (
        f"  from the cache: {', '.join(cached)}"
        if cached
        else "  nothing cached yet: debootstrap and the package installation run first (minutes)"
    )


@contextlib.contextmanager
def _work_folder(work: str) -> Iterator[None]:
    """A fresh, private work folder for one image, gone afterwards, with the folders above it
    that the build leaves empty."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    try:
        yield
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for folder in (os.path.dirname(work), os.path.dirname(os.path.dirname(work))):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty: another build may be using it


@contextlib.contextmanager
def _cleaned_up_on_failure(job: Job, progress: Progress) -> Iterator[None]:
    try:
        yield
    except BaseException:
        clean_up(job, progress)
        raise


def _host_key(root: str, img: HostImage) -> str | None:
    """The host's own age identity, only for an entry with include_host_key: true."""
    if not img.include_host_key:
        return None
    from orchestrator.secrets.store import pending_key

    key = pending_key(root, img.host)
    if key is None:
        raise UsageError(
            f"image {img.image!r} asks for {img.host}'s age key (include_host_key: true) and "
            f"there is none waiting in .orchestrate/host-keys/: run "
            f"`orchestrate secrets host-key {img.host}` first"
        )
    return key


__all__ = [
    "BuildFailed",
    "BuildInterrupted",
    "Built",
    "build_images",
    "cache_dir",
    "cache_keys",
    "check_build_host",
    "image_ids",
    "source_date_epoch",
]
