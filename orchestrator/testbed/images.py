"""Local testbed images without a registry: debootstrap a Debian root, import it into podman,
then build an SSH host image on top. Both are cached in podman's store by name."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable

from orchestrator.errors import OrchestrateError
from orchestrator.naming import DEBIAN_ARCH
from orchestrator.proc import run
from orchestrator.testbed.packages import Preload

HERE = os.path.dirname(os.path.abspath(__file__))
Progress = Callable[[str], None]


class TestbedError(OrchestrateError):
    """The testbed cannot be set up on this machine (with what to do about it)."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.path.join(HERE, "containers.conf")}


def podman(
    *args: str, check: bool = True, input: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    if shutil.which("podman") is None:
        raise TestbedError("podman is not installed (apt-get install podman runc)")

    def fail(done: subprocess.CompletedProcess[str]) -> Exception:
        return TestbedError(f"podman {' '.join(args[:2])} failed: {done.stderr.strip()[-800:]}")

    return run(
        ["podman", *args], fail if check else None, env=podman_env(), input=input, timeout=timeout
    )


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (so the testbed follows local configuration)."""
    explicit = os.environ.get("ORCHESTRATE_MIRROR")
    if explicit:
        return explicit
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
    if os.path.exists("/etc/apt/sources.list"):
        with open("/etc/apt/sources.list", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if parts[:1] == ["deb"] and "security" not in line:
                    return next(p for p in parts[1:] if "://" in p)
    raise TestbedError("no Debian mirror found in /etc/apt; set ORCHESTRATE_MIRROR")


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ssh_image(arch: str, suite: str, progress: Progress) -> str:
    """The SSH host image for an architecture, built on first use."""
    deb = DEBIAN_ARCH[arch]
    alias = f"localhost/orchestrate-ssh:{suite}-{deb}"
    name = f"{alias}-{recipe_digest()}"  # a changed recipe builds a new image
    if image_exists(name):
        return name
    if arch == "aarch64":
        ensure_emulation()
    base = base_image(arch, suite, progress)
    progress(f"building {name} (sshd, python3) ...")
    podman(
        "build",
        "--arch",
        deb,
        "--build-arg",
        f"BASE={base}",
        "-t",
        name,
        "-f",
        os.path.join(HERE, "Containerfile"),
        HERE,
        timeout=1800,
    )
    podman("tag", name, alias)  # the stable name molecule scenarios use
    return name


def preloaded_image(arch: str, suite: str, preload: Preload | None, progress: Progress) -> str:
    """The SSH host image with a preload's packages installed from its archive components, as
    the roles install them (with or without recommends), and apt's lists kept (`testbed up
    --preload`); built on first use. Its name carries the lists and the ISO week, so that an
    edited list builds a new image and the lists in it are at most a week old. A package the
    archive does not have is left to the first apply."""
    import hashlib
    import time

    base = ssh_image(arch, suite, progress)
    if preload is None or not (preload.packages or preload.recommending):
        return base
    week = time.strftime("%G-%V", time.gmtime())
    text = "\n".join([week, *preload.components, "", *preload.packages, "", *preload.recommending])
    name = f"{base}-pre-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    if image_exists(name):
        return name
    count = len(preload.packages) + len(preload.recommending)
    progress(f"building {name}: {count} package(s) preloaded for {arch} ...")
    steps = [
        f"sed -i 's/ main$/ {' '.join(preload.components)}/' /etc/apt/sources.list",
        "apt-get update",
        _install("--no-install-recommends", preload.packages),
        _install("", preload.recommending),
    ]
    recipe = f"FROM {base}\nRUN " + " \\\n && ".join(s for s in steps if s) + "\n"
    with tempfile.TemporaryDirectory(prefix="orchestrate-preload-") as context:
        with open(os.path.join(context, "Containerfile"), "w", encoding="utf-8") as fh:
            fh.write(recipe)
        podman("build", "--arch", DEBIAN_ARCH[arch], "-t", name, context, timeout=3600)
    return name


def _install(flags: str, packages: tuple[str, ...]) -> str:
    """All at once, else one by one (a name the archive lacks is left to the first apply)."""
    if not packages:
        return ""
    cmd = f"DEBIAN_FRONTEND=noninteractive apt-get install -y {flags}".rstrip()
    names = " ".join(packages)
    return f"({cmd} {names} || for p in {names}; do {cmd} $p || true; done)"


def recipe_digest() -> str:
    import hashlib

    h = hashlib.sha256()
    for f in ("Containerfile", "entrypoint.sh"):
        with open(os.path.join(HERE, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:8]


def base_image(arch: str, suite: str, progress: Progress) -> str:
    deb = DEBIAN_ARCH[arch]
    name = f"localhost/orchestrate-base:{suite}-{deb}"
    if image_exists(name):
        return name
    if shutil.which("debootstrap") is None:
        raise TestbedError("debootstrap is not installed (apt-get install debootstrap)")
    progress(f"bootstrapping Debian {suite} for {arch} with debootstrap (a few minutes) ...")
    with tempfile.TemporaryDirectory(prefix="orchestrate-rootfs-") as tmp:
        root = os.path.join(tmp, "rootfs")
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--arch={deb}",
            "--include=python3",
            suite,
            root,
            apt_mirror(),
        ]
        run(
            cmd,
            lambda r: TestbedError(f"debootstrap failed: {r.stdout[-600:]}{r.stderr[-600:]}"),
            timeout=1800,
        )
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["podman", "import", "--arch", deb, "-", name],
            stdin=tar.stdout,
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imp.returncode != 0:
            raise TestbedError(f"podman import failed: {imp.stderr.strip()}")
    return name


def ensure_emulation() -> None:
    """aarch64 on another architecture needs qemu-user registered with binfmt_misc."""
    if os.uname().machine == "aarch64":
        return
    entry = "/proc/sys/fs/binfmt_misc/qemu-aarch64"
    if os.path.exists(entry):
        return
    if not os.path.exists("/proc/sys/fs/binfmt_misc/register"):
        # best effort: whether it worked is what the entry's presence says below
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], None)
    if shutil.which("update-binfmts"):
        run(["update-binfmts", "--enable", "qemu-aarch64"], None)
    if not os.path.exists(entry):
        raise TestbedError(
            "aarch64 hosts need qemu-user emulation, which this machine does not have: "
            "apt-get install qemu-user-static binfmt-support (and a kernel with binfmt_misc), "
            "or leave the aarch64 hosts out with --hosts"
        )
