"""The image builder's cache: the bootstrapped and the installed root filesystem as tarballs,
named by what they were made from, so that a build with the same inputs starts from them.
The same digests name an image's inputs in its manifest."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from orchestrator.images.plan import HostImage

INSTALL_RECIPE = 2  # raise when the installation step changes: cached installations are redone


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrate", "images")


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def tree_digest(folder: str) -> str:
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
    base = json_digest(
        {
            "suite": img.suite,
            "arch": img.debian_arch,
            "components": img.components,
            "mirror": img.mirror,
        }
    )[:16]
    installation = {"base": base, "packages": img.packages, "recipe": INSTALL_RECIPE}
    return base, json_digest(installation)[:16]


@dataclass(frozen=True)
class Tarballs:
    """One image's two cached tarballs in ``folder``, and which stages they served when the
    build began (looked at once: the build itself makes the missing ones)."""

    base_key: str
    installed_key: str
    base_name: str
    installed_name: str
    folder: str
    cached: tuple[str, ...]  # "bootstrap", "packages": the stages served from the cache

    @property
    def base_path(self) -> str:
        return os.path.join(self.folder, self.base_name)

    @property
    def installed_path(self) -> str:
        return os.path.join(self.folder, self.installed_name)

    def seed(self) -> str | None:
        """This machine's tarball that saves a remote build host the most work: the
        installation is what a build starts from, so it alone is enough; else the bootstrap."""
        return next((p for p in (self.installed_path, self.base_path) if os.path.exists(p)), None)


def tarballs(img: HostImage, folder: str) -> Tarballs:
    base_key, installed_key = cache_keys(img)
    base_name = f"base-{img.suite}-{img.debian_arch}-{base_key}.tar"
    installed_name = f"installed-{img.suite}-{img.debian_arch}-{installed_key}.tar"
    found = (
        ("bootstrap", os.path.join(folder, base_name)),
        ("packages", os.path.join(folder, installed_name)),
    )
    cached = tuple(s for s, p in found if os.path.exists(p))
    return Tarballs(base_key, installed_key, base_name, installed_name, folder, cached)


__all__ = ["Tarballs", "cache_dir", "cache_keys", "json_digest", "tarballs", "tree_digest"]
