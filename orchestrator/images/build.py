"""`orchestrate image build`: one disk image per host of an `images:` entry, made by the shipped
image_builder role on the build host and the host's own roles applied offline in between.

Per host image, three ansible-runner runs: playbooks/image.yml `prepare` (bootstrap and package
installation, each cached as a tarball keyed by its inputs; identity files; the build network),
the compiled site.yml limited to the host through an isolated chroot (its own roles, as an apply
would run them), playbooks/image.yml `finish` (initramfs, normalisation, file systems, partition
table, qcow2). The build host is this machine, or with `deploy.build_on: remote` the host itself
over SSH: the same three runs go there, and the disk file comes back. The image is written under
a temporary name and renamed, with its manifest, only when every stage succeeded: a failed build
leaves the previous image and manifest as they were."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.compiler.unsafe import plain_json, unsafe_json
from orchestrator.digest import file_digest
from orchestrator.errors import OrchestrateError, UsageError
from orchestrator.executor.lock import FleetLock
from orchestrator.fsutil import atomic_write
from orchestrator.images.plan import MANIFEST, HostImage, load_manifest

Progress = Callable[[str], None]
DEFAULT_EPOCH = 1735689600  # 2025-01-01T00:00:00Z, when SOURCE_DATE_EPOCH is not set
ID_NAMESPACE = uuid.UUID("6f0e3c52-5d1a-4b8e-9f27-0c7a1e2d4b60")
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
BUILDER_ROLE = "image_builder"
REMOTE_WORK = "/var/tmp/orchestrate-images"  # on a remote build host: per-image work folders
REMOTE_CACHE = "/var/cache/orchestrate/images"  # and its cache
INSTALL_RECIPE = 2  # raise when the installation step changes: cached installations are redone


class BuildFailed(OrchestrateError):
    """A stage of an image build failed; nothing of that image was kept."""


class BuildInterrupted(BuildFailed):
    """Ctrl-C or SIGTERM stopped the build; nothing of that image was kept."""

    exit_code = 130


@dataclass(frozen=True)
class _Job:
    """One host image's build: where its runs keep their files here, the builder's variables,
    and the remote build host's connection (None: this machine builds it)."""

    build_dir: str
    work: str
    variables: dict[str, Any]
    img: HostImage
    remote: dict[str, Any] | None
    host_vars: dict[str, Any]  # for the host's roles: the sops binary of a host with secrets


@dataclass(frozen=True)
class Built:
    image: HostImage
    path: str
    sha256: str
    seconds: float
    cached: list[str]  # the stages served from the cache


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrate", "images")


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
    images = [i for i in images if not _remote(i)]
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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _tree_digest(folder: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in ("molecule", "__pycache__"))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def cache_keys(img: HostImage) -> tuple[str, str]:
    """(bootstrap key, installation key): what each cached tarball was made from."""
    base = _digest(
        {
            "suite": img.suite,
            "arch": img.debian_arch,
            "components": img.components,
            "mirror": img.mirror,
        }
    )[:16]
    installed = _digest({"base": base, "packages": img.packages, "recipe": INSTALL_RECIPE})[:16]
    return base, installed


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
    host_keys = {(i.image, i.host): _host_key(root, i) for i in images}
    remotes = {i.host: remote_connection(root, build_dir, i.host) for i in images if _remote(i)}
    secret_vars = _secrets_vars(root, fleet, images, progress)
    cancelled = cancelled or threading.Event()
    builder_digest = _tree_digest(os.path.join(shipped_roles_dir(), BUILDER_ROLE))
    results = []
    # one build at a time per output folder: builds share its work folder and manifests
    with FleetLock(out, "image build"):
        for n, img in enumerate(images, 1):
            progress(f"[{n}/{len(images)}] {img.file}: {img.host}, {img.arch}, {img.format}")
            results.append(
                _build_one(
                    build_dir,
                    fleet,
                    img,
                    host_keys[(img.image, img.host)],
                    remotes.get(img.host),
                    secret_vars.get(img.host, {}),
                    out,
                    epoch,
                    builder_digest,
                    progress,
                    cancelled,
                )
            )
    return results


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


def _remote(img: HostImage) -> bool:
    return img.build_on == "remote"


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
    return {**conn, "ansible_python_interpreter": "/usr/bin/python3"}


def _build_one(
    build_dir: str,
    fleet: dict[str, Any],
    img: HostImage,
    host_key: str | None,
    remote: dict[str, Any] | None,
    host_vars: dict[str, Any],
    out: str,
    epoch: int,
    builder_digest: str,
    progress: Progress,
    cancelled: threading.Event,
) -> Built:
    started = time.monotonic()
    cache = cache_dir()
    base_key, installed_key = cache_keys(img)
    tar_names = (
        f"base-{img.suite}-{img.debian_arch}-{base_key}.tar",
        f"installed-{img.suite}-{img.debian_arch}-{installed_key}.tar",
    )
    base_tar, installed_tar = (os.path.join(cache, n) for n in tar_names)
    cached = [
        s for s, p in (("bootstrap", base_tar), ("packages", installed_tar)) if os.path.exists(p)
    ]
    if remote is not None:
        progress(
            f"  building on {img.host} itself (deploy.build_on: remote, "
            f"{remote.get('ansible_host', img.host)})"
            + (f"; this machine's cache seeds it: {', '.join(cached)}" if cached else "")
        )
    else:
        progress(
            f"  from the cache: {', '.join(cached)}"
            if cached
            else "  nothing cached yet: debootstrap and the package installation run first "
            "(minutes)"
        )
    final = os.path.join(out, img.file)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")
    work = os.path.join(out, ".work", img.image, img.host)
    ids = image_ids(str(fleet["fleet"]["name"]), img)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    # where the builder works: here, or on the remote build host (its own paths and cache)
    bwork = f"{REMOTE_WORK}/{img.image}/{img.host}" if remote is not None else work
    bcache = REMOTE_CACHE if remote is not None else cache
    # this machine's cached tarball saves the remote its bootstrap (same name, same inputs);
    # the installation is what a build starts from, so it alone is enough
    local = next((p for p in (installed_tar, base_tar) if os.path.exists(p)), None)
    seed = [{"src": local, "dest": f"{REMOTE_CACHE}/{os.path.basename(local)}"}] if local else []
    builder_vars: dict[str, Any] = {
        "image_builder_root": f"{bwork}/root",
        "image_builder_work": bwork,
        "image_builder_cache": bcache,
        "image_builder_arch": img.debian_arch,
        "image_builder_suite": img.suite,
        "image_builder_mirror": img.mirror,
        "image_builder_components": list(img.components),
        "image_builder_packages": list(img.packages),
        "image_builder_base_tar": f"{bcache}/{tar_names[0]}",
        "image_builder_installed_tar": f"{bcache}/{tar_names[1]}",
        "image_builder_epoch": epoch,
        "image_builder_hostname": img.host,
        "image_builder_format": img.format,
        "image_builder_ids": ids,
        "image_builder_boot_mib": img.boot_mib,
        "image_builder_root_mib": img.root_mib,
        "image_builder_output": partial,
        "image_builder_host_key": host_key or "",
        # unique per build: two builds on one host never share a network namespace
        "image_builder_netns": f"orchestrate-image-{uuid.uuid4().hex[:12]}",
    }
    if remote is not None:
        builder_vars.update(
            {
                "image_builder_remote": True,
                "image_builder_tools": f"{bwork}/tools",
                "image_builder_seed": seed,
                "image_builder_output": f"{bwork}/{os.path.basename(final)}",
                "image_builder_fetch_to": partial,
            }
        )
    job = _Job(build_dir, work, builder_vars, img, remote, host_vars)
    done = False
    try:
        for stage in ("prepare", "roles", "finish"):
            if cancelled.is_set():
                raise BuildInterrupted(f"{img.file}: interrupted; nothing of it was kept")
            t0 = time.monotonic()
            if stage == "roles":
                _apply_host_roles(job, progress, cancelled)
            else:
                _run_builder(job, stage, progress, cancelled)
            progress(f"  {stage}: done in {time.monotonic() - t0:.0f}s")
        sha = file_digest(partial)
        os.replace(partial, final)
        done = True
    finally:
        if not done:
            _clean_up(job, progress)
        if os.path.exists(partial):
            os.unlink(partial)
        shutil.rmtree(work, ignore_errors=True)
        for folder in (os.path.dirname(work), os.path.dirname(os.path.dirname(work))):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty: another build may be using it
    _record(out, build_dir, img, sha, fleet, epoch, builder_digest, base_key, installed_key)
    seconds = time.monotonic() - started
    progress(f"  {img.file}: sha256 {sha[:16]}..., {seconds:.0f}s")
    return Built(img, final, sha, seconds, cached)


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


def _events(
    label: str, progress: Progress, failures: list[str]
) -> Callable[[dict[str, Any]], bool]:
    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start":
            task = str(data.get("task", ""))
            if task and not task.startswith(("Gathering", "Check the stage")):
                progress(f"  {label}: {task}")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            res = data.get("res", {})
            items = [
                r
                for r in res.get("results", [])
                if isinstance(r, dict) and (r.get("failed") or r.get("unreachable"))
            ]
            msg = "; ".join(dict.fromkeys(_result_message(r) for r in items))
            msg = msg or _result_message(res)
            failures.append(f"{data.get('task', '?')}: {msg[-1200:]}")
        return True

    return handle


def _result_message(res: dict[str, Any]) -> str:
    parts = [res.get("msg"), res.get("stderr"), res.get("module_stderr")]
    return " ".join(str(p).strip() for p in parts if p)


def _clean_up(job: _Job, progress: Progress) -> None:
    """After a failed or stopped build: the build network down and, on a remote build host, its
    work folder gone. Best effort: what it cannot do, it says."""
    try:
        # a fresh event: it runs even when the build itself was stopped
        _run_builder(job, "cleanup", lambda _msg: None, threading.Event())
    except BuildFailed as e:
        progress(f"  warning: could not clean up after the build: {e}")


def _run_builder(job: _Job, stage: str, progress: Progress, cancelled: threading.Event) -> None:
    import ansible_runner

    from orchestrator.paths import shipped_playbooks_dir, shipped_roles_dir

    img, remote = job.img, job.remote
    run_dir = os.path.join(job.work, f"runner-{stage}")
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    failures: list[str] = []
    envvars = {
        "ANSIBLE_ROLES_PATH": shipped_roles_dir(),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
    }
    if remote is None:
        hosts = {
            "localhost": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            }
        }
    else:
        hosts = {img.host: remote}
        # the compiled build's SSH settings: pipelining, connection reuse, public keys only
        envvars["ANSIBLE_CONFIG"] = os.path.join(job.build_dir, "ansible.cfg")
    r = ansible_runner.run(
        private_data_dir=run_dir,
        project_dir=shipped_playbooks_dir(),
        playbook="image.yml",
        inventory={"all": {"hosts": hosts}},
        envvars=envvars,
        extravars=unsafe_json({**job.variables, "image_builder_stage": stage}),
        quiet=True,
        ident="artifacts",
        event_handler=_events(stage, progress, failures),
        cancel_callback=cancelled.is_set,
        suppress_env_files=True,
    )
    if cancelled.is_set():
        raise BuildInterrupted(f"{img.file}: interrupted; nothing of it was kept")
    if r.rc != 0 or r.status != "successful":
        detail = "\n  ".join(failures) or f"ansible-runner ended {r.status} (rc {r.rc})"
        raise BuildFailed(f"{img.file}: the image builder's {stage} stage failed:\n  {detail}")


def _apply_host_roles(job: _Job, progress: Progress, cancelled: threading.Event) -> None:
    """The host's own roles, through the isolated chroot in the build network that `prepare`
    brought up: as an apply would run them."""
    from orchestrator.executor import runner
    from orchestrator.paths import shipped_roles_dir

    img, remote, builder_vars = job.img, job.remote, job.variables
    netns = f"/run/netns/{builder_vars['image_builder_netns']}"
    root = str(builder_vars["image_builder_root"])
    if remote is None:
        chroot_exe = os.path.join(shipped_roles_dir(), BUILDER_ROLE, "files", "chroot-isolated")
        conn: dict[str, Any] = {
            "ansible_connection": "community.general.chroot",
            "ansible_host": root,
            "ansible_chroot_exe": chroot_exe,
        }
    else:
        # SSH to the build host with a login shell that enters the root folder; uploads go to
        # a folder whose path means the same place outside and inside (see remote-chroot.yml)
        conn = {
            **remote,
            "ansible_shell_executable": f"{builder_vars['image_builder_tools']}/in-chroot",
            "ansible_remote_tmp": f"{root}/.ansible-tmp",
        }
    overrides = {
        img.host: {
            **job.host_vars,
            **conn,
            "ansible_become": False,
            "ansible_python_interpreter": "/usr/bin/python3",
            "orchestrate_image": True,
        }
    }
    req = runner.RunRequest(
        build_dir=job.build_dir,
        run_dir=os.path.join(job.work, "runner-roles"),
        hosts=[img.host],
        overrides=overrides,
        # the chroot's facts must not stand in for the real host's in the build's fact cache
        envvars={
            "ANSIBLE_CACHE_PLUGIN": "memory",
            "SYSTEMD_OFFLINE": "1",
            "ORCHESTRATE_IMAGE_NETNS": netns,
        },
    )
    failures: list[str] = []

    def on_event(ev: runner.Event) -> None:
        if ev.kind == "task_start" and not ev.task.startswith("Gathering"):
            progress(f"  roles: {ev.task}")

    res = runner.run(req, on_event, cancelled)
    for t in res.tasks:
        if t.status in ("failed", "unreachable"):
            failures.append(
                f"{t.role + ': ' if t.role else ''}{t.task}: {t.message.strip()[-1200:]}"
            )
    if cancelled.is_set():
        raise BuildInterrupted(f"{img.file}: interrupted; nothing of it was kept")
    stats = res.stats.get(img.host)
    if res.rc != 0 or stats is None or not stats.success:
        detail = "\n  ".join(failures) or f"ansible-runner ended {res.status} (rc {res.rc})"
        raise BuildFailed(f"{img.file}: {img.host}'s roles failed in the image:\n  {detail}")


def _record(
    out: str,
    build_dir: str,
    img: HostImage,
    sha: str,
    fleet: dict[str, Any],
    epoch: int,
    builder_digest: str,
    base_key: str,
    installed_key: str,
) -> None:
    """Add this host's file, hash and inputs to the entry's manifest (atomically)."""
    host = fleet["hosts"][img.host]
    hosts = load_manifest(out, img.image)
    hosts[img.host] = {
        "file": os.path.basename(img.file),
        "sha256": sha,
        "format": img.format,
        "arch": img.arch,
        "built_on": img.host if _remote(img) else "local",
        "inputs": {
            "config": _digest(host.get("config", {})),
            "roles": {r: _tree_digest(os.path.join(build_dir, "roles", r)) for r in host["roles"]},
            "suite": img.suite,
            "mirror": img.mirror,
            "packages": list(img.packages),
            "bootstrap": base_key,
            "installation": installed_key,
            "image_builder": builder_digest,
            "source_date_epoch": epoch,
            "size": img.size,
            "host_key": img.include_host_key,
            "secrets": _tree_digest(os.path.join(build_dir, "secrets")),
        },
    }
    doc = {"image": img.image, "format": img.format, "hosts": hosts}
    path = os.path.join(out, img.image, MANIFEST)
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o644)


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
