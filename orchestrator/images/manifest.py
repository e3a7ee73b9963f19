"""An image entry's manifest, NAME/manifest.json beside its files: per host, the file, its
sha256, where it was built and the digests of every input, written when the host's file is in
place. Reading it is images/plan.py's load_manifest, which `image list`, `image boot` and
`testbed up --from-image` share."""

from __future__ import annotations

import json
import os
from typing import Any

from orchestrator.fsutil import atomic_write
from orchestrator.images.cache import Tarballs, json_digest, tree_digest
from orchestrator.images.job import Batch, builds_remotely
from orchestrator.images.plan import MANIFEST, HostImage, load_manifest


def record_image(batch: Batch, img: HostImage, sha: str, tars: Tarballs) -> None:
    """Add this host's file, hash and inputs to the entry's manifest (atomically)."""
    hosts = load_manifest(batch.out, img.image)
    hosts[img.host] = {
        "file": os.path.basename(img.file),
        "sha256": sha,
        "format": img.format,
        "arch": img.arch,
        "built_on": img.host if builds_remotely(img) else "local",
        "inputs": _inputs(batch, img, tars),
    }
    doc = {"image": img.image, "format": img.format, "hosts": hosts}
    path = os.path.join(batch.out, img.image, MANIFEST)
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def _inputs(batch: Batch, img: HostImage, tars: Tarballs) -> dict[str, Any]:
    """What the file was made from: same digests, same bytes."""
    host = batch.fleet["hosts"][img.host]
    build_dir = batch.build_dir
    return {
        "config": json_digest(host.get("config", {})),
        "roles": {r: tree_digest(os.path.join(build_dir, "roles", r)) for r in host["roles"]},
        "suite": img.suite,
        "mirror": img.mirror,
        "packages": list(img.packages),
        "bootstrap": tars.base_key,
        "installation": tars.installed_key,
        "image_builder": batch.builder_digest,
        "source_date_epoch": batch.epoch,
        "size": img.size,
        "host_key": img.include_host_key,
        "secrets": tree_digest(os.path.join(build_dir, "secrets")),
    }


__all__ = ["record_image"]
