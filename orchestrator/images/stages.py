"""The stages of one image's build, each an ansible-runner run on the build host: the image
builder's `prepare`, the host's own roles through the isolated chroot, the builder's `finish`;
and its `cleanup` after a failed or stopped build."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestrateError
from orchestrator.exitcodes import INTERRUPTED
from orchestrator.images.job import Job

if TYPE_CHECKING:
    from orchestrator.executor.runner import RunRequest, RunResult

Progress = Callable[[str], None]
BUILDER_ROLE = "image_builder"
STAGES = ("prepare", "roles", "finish")


class BuildFailed(OrchestrateError):
    """A stage of an image build failed; nothing of that image was kept."""


class BuildInterrupted(BuildFailed):
    """Ctrl-C or SIGTERM stopped the build; nothing of that image was kept."""

    exit_code = INTERRUPTED


def run_stages(job: Job, progress: Progress, cancelled: threading.Event) -> None:
    """Every stage in order, each timed; a stop between two stages ends the build there."""
    for stage in STAGES:
        if cancelled.is_set():
            raise BuildInterrupted(f"{job.img.file}: interrupted; nothing of it was kept")
        t0 = time.monotonic()
        if stage == "roles":
            apply_host_roles(job, progress, cancelled)
        else:
            run_builder(job, stage, progress, cancelled)
        progress(f"  {stage}: done in {time.monotonic() - t0:.0f}s")


def clean_up(job: Job, progress: Progress) -> None:
    """After a failed or stopped build: the build network down and, on a remote build host, its
    work folder gone. Best effort: what it cannot do, it says."""
    try:
        # a fresh event: it runs even when the build itself was stopped
        run_builder(job, "cleanup", lambda _msg: None, threading.Event())
    except BuildFailed as e:
        progress(f"  warning: could not clean up after the build: {e}")


def run_builder(job: Job, stage: str, progress: Progress, cancelled: threading.Event) -> None:
    """One stage of playbooks/image.yml (the image_builder role) on the build host."""
    from orchestrator.executor import runner
    from orchestrator.paths import shipped_playbooks_dir

    hosts, envvars = _builder_host(job)
    req = runner.PlaybookRequest(
        run_dir=os.path.join(job.work, f"runner-{stage}"),
        project_dir=shipped_playbooks_dir(),
        playbook="image.yml",
        inventory={"all": {"hosts": hosts}},
        envvars=envvars,
        extravars={**job.variables, "image_builder_stage": stage},
    )

    def on_event(ev: runner.Event) -> None:
        if ev.kind == "task_start" and not ev.task.startswith(("Gathering", "Check the stage")):
            progress(f"  {stage}: {ev.task}")

    r = runner.run_playbook(req, on_event, cancelled)
    if cancelled.is_set():
        raise BuildInterrupted(f"{job.img.file}: interrupted; nothing of it was kept")
    if r.rc != 0 or r.status != "successful":
        failures = [
            f"{t.task}: {t.message[-1200:]}"
            for t in r.tasks
            if t.status in ("failed", "unreachable")
        ]
        detail = "\n  ".join(failures) or f"ansible-runner ended {r.status} (rc {r.rc})"
        raise BuildFailed(f"{job.img.file}: the image builder's {stage} stage failed:\n  {detail}")


def _builder_host(job: Job) -> tuple[dict[str, Any], dict[str, str]]:
    """The builder's inventory hosts and environment: this machine, or the remote build host."""
    from orchestrator.paths import shipped_roles_dir

    envvars = {
        "ANSIBLE_ROLES_PATH": shipped_roles_dir(),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
    }
    if job.remote is None:
        hosts: dict[str, Any] = {
            "localhost": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            }
        }
    else:
        hosts = {job.img.host: job.remote}
        # the compiled build's SSH settings: pipelining, connection reuse, public keys only
        envvars["ANSIBLE_CONFIG"] = os.path.join(job.build_dir, "ansible.cfg")
    return hosts, envvars


def apply_host_roles(job: Job, progress: Progress, cancelled: threading.Event) -> None:
    """The host's own roles, through the isolated chroot in the build network that `prepare`
    brought up: as an apply would run them."""
    from orchestrator.executor import runner

    img = job.img

    def on_event(ev: runner.Event) -> None:
        if ev.kind == "task_start" and not ev.task.startswith("Gathering"):
            progress(f"  roles: {ev.task}")

    res = runner.run(_roles_request(job), on_event, cancelled)
    failures = _role_failures(res)
    if cancelled.is_set():
        raise BuildInterrupted(f"{img.file}: interrupted; nothing of it was kept")
    stats = res.stats.get(img.host)
    if res.rc != 0 or stats is None or not stats.success:
        detail = "\n  ".join(failures) or f"ansible-runner ended {res.status} (rc {res.rc})"
        raise BuildFailed(f"{img.file}: {img.host}'s roles failed in the image:\n  {detail}")


def _roles_request(job: Job) -> RunRequest:
    """The compiled site.yml limited to the host, reaching its root folder instead of it."""
    from orchestrator.executor import runner

    img, builder_vars = job.img, job.variables
    netns = f"/run/netns/{builder_vars['image_builder_netns']}"
    overrides = {
        img.host: {
            **job.host_vars,
            **_chroot_connection(job),
            "ansible_become": False,
            "ansible_python_interpreter": "/usr/bin/python3",
            "orchestrate_image": True,
        }
    }
    return runner.RunRequest(
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


def _chroot_connection(job: Job) -> dict[str, Any]:
    """How Ansible enters the image's root folder: a chroot here, or on the remote build host."""
    from orchestrator.paths import shipped_roles_dir

    builder_vars = job.variables
    root = str(builder_vars["image_builder_root"])
    if job.remote is None:
        chroot_exe = os.path.join(shipped_roles_dir(), BUILDER_ROLE, "files", "chroot-isolated")
        return {
            "ansible_connection": "community.general.chroot",
            "ansible_host": root,
            "ansible_chroot_exe": chroot_exe,
        }
    # SSH to the build host with a login shell that enters the root folder; uploads go to
    # a folder whose path means the same place outside and inside (see remote-chroot.yml)
    return {
        **job.remote,
        "ansible_shell_executable": f"{builder_vars['image_builder_tools']}/in-chroot",
        "ansible_remote_tmp": f"{root}/.ansible-tmp",
    }


def _role_failures(res: RunResult) -> list[str]:
    return [
        f"{t.role + ': ' if t.role else ''}{t.task}: {t.message.strip()[-1200:]}"
        for t in res.tasks
        if t.status in ("failed", "unreachable")
    ]


__all__ = [
    "BUILDER_ROLE",
    "BuildFailed",
    "BuildInterrupted",
    "apply_host_roles",
    "clean_up",
    "run_builder",
    "run_stages",
]
