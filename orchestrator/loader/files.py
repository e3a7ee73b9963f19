"""Reading the fleet's files safely: only regular files, of bounded size, and only from the
folders a fleet may name (nothing heavy imported, so that fast commands stay fast).

A module path, a role file or a `lib` folder is fleet input like any value: `imports:
[/home/me/.ssh/id_ed25519]` or a role file linked to /dev/zero must be refused before anything
is read, not read and then complained about.
"""

from __future__ import annotations

import os


def inside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` lies in one of ``roots``, both as written and once every symlink on
    the way is resolved (a link inside the fleet that points out of it is outside)."""
    written = os.path.normpath(os.path.abspath(path))
    real = os.path.realpath(path)
    return any(_below(written, r) for r in roots) and any(
        _below(real, os.path.realpath(r)) for r in roots
    )


def _below(path: str, root: str) -> bool:
    root = os.path.normpath(os.path.abspath(root))
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
