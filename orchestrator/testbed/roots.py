"""Root filesystems copied out of built images for `testbed up --from-image`: where they live
and how they are released (the testbed removes them whenever a host's container goes)."""

from __future__ import annotations

import os
import shutil

from orchestrator import proc
from orchestrator.testbed.images import TestbedError


def image_root_dir(state_dir: str, host: str) -> str:
    return os.path.join(state_dir, "testbed-images", host)


def run_tool(*cmd: str) -> str:
    def failed(done: proc.Text) -> TestbedError:
        return TestbedError(f"{' '.join(cmd[:2])}: {done.stderr.strip() or done.stdout.strip()}")

    return proc.run(cmd, failed).stdout


def release(work: str) -> None:
    """Unmount and remove a copied root filesystem (nothing when there is none)."""
    mnt = os.path.join(work, "root")
    if os.path.ismount(mnt):
        run_tool("umount", mnt)
    shutil.rmtree(work, ignore_errors=True)
