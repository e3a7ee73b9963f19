"""`orchestrate image boot NAME`: boot a built x86_64 image under qemu (UEFI firmware, software
emulation), wait for the machine to say it is up on its serial console and for its sshd to
answer on the configured port, then stop it. The image file is not changed: the machine writes
to a throwaway overlay."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import OrchestrateError, UsageError
from orchestrator.fsutil import user_file_target, write_user_file
from orchestrator.testbed.manager import speaks_ssh

Progress = Callable[[str], None]
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd"
READY = b" is up"


class BootFailed(OrchestrateError):
    """The machine did not come up in time."""


@dataclass(frozen=True)
class BootResult:
    host: str
    ready_seconds: float
    ssh_seconds: float
    console: str  # the serial console's last lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot(
    image: str, host: str, ssh_port: int, timeout: float, progress: Progress, keep_log: str = ""
) -> BootResult:
    """Boot ``image`` (qcow2 or raw, x86_64, UEFI) and wait for the ready line and sshd."""
    if keep_log:
        user_file_target(keep_log)  # refused now, not after minutes of booting
    if shutil.which("qemu-system-x86_64") is None or not os.path.exists(OVMF_CODE):
        raise UsageError(
            "booting an image needs qemu-system-x86_64 and UEFI firmware "
            "(Debian: apt-get install qemu-system-x86 ovmf)"
        )
    with tempfile.TemporaryDirectory(prefix="orchestrate-boot-") as tmp:
        cmd, serial, port = _qemu_command(image, tmp, ssh_port)
        progress(f"{host}: booting {os.path.basename(image)} (UEFI, software emulation)")
        started = time.monotonic()
        vm = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = ssh = 0.0
        try:
            while time.monotonic() - started < timeout:
                if vm.poll() is not None:
                    err = vm.stderr.read().decode(errors="replace") if vm.stderr else ""
                    raise BootFailed(f"{host}: qemu stopped: {err.strip()[-600:]}")
                if not ready and READY in _read(serial):
                    ready = time.monotonic() - started
                    progress(f"{host}: up after {ready:.0f}s; waiting for sshd on {ssh_port}")
                if ready and speaks_ssh("127.0.0.1", port, 3):
                    ssh = time.monotonic() - started
                    break
                time.sleep(1)
            console = _read(serial).decode(errors="replace")
            if keep_log:
                write_user_file(keep_log, console.encode(), 0o644)
            if not ssh:
                what = "sshd did not answer" if ready else "it never said it was up"
                tail = "\n  ".join(console.splitlines()[-15:])
                raise BootFailed(
                    f"{host}: {what} within {timeout:.0f}s; the console ended:\n  {tail}"
                )
        finally:
            vm.kill()
            vm.wait()
    progress(f"{host}: sshd answered after {ssh:.0f}s")
    return BootResult(host, ready, ssh, "\n".join(console.splitlines()[-5:]))


def _qemu_command(image: str, tmp: str, ssh_port: int) -> tuple[list[str], str, int]:
    """qemu's command line for ``image`` on a throwaway overlay in ``tmp``, with its own copy of
    the UEFI variables; and the serial console's file and the local port sshd is forwarded to."""
    fmt = "qcow2" if image.endswith(".qcow2") else "raw"
    overlay = os.path.join(tmp, "overlay.qcow2")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(image), "-F", fmt,
         overlay],
        check=True,
    )  # fmt: skip
    shutil.copyfile(OVMF_VARS, os.path.join(tmp, "vars.fd"))
    serial = os.path.join(tmp, "serial.log")
    port = _free_port()
    cmd = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2",
        "-m", "1024", "-display", "none", "-monitor", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={os.path.join(tmp, 'vars.fd')}",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{ssh_port}",
        "-device", "virtio-net-pci,netdev=n0",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    return cmd, serial, port


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


__all__ = ["BootFailed", "BootResult", "boot"]
