"""Root filesystems copied out of built images for `testbed up --from-image`: where they live
and how they are released (the testbed removes them whenever a host's container goes)."""

from __future__ import annotations

import os
import shutil
import subprocess

from orchestrator.testbed.images import TestbedError


def image_root_dir(state_dir: str, host: str) -> str:
    return os.path.join(state_dir, "testbed-images", host)


def run_tool(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise TestbedError(f"{' '.join(cmd[:2])}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def release(work: str) -> None:
    """Unmount and remove a copied root filesystem (nothing when there is none)."""
    mnt = os.path.join(work, "root")
    if os.path.ismount(mnt):
        run_tool("umount", mnt)
    shutil.rmtree(work, ignore_errors=True)
