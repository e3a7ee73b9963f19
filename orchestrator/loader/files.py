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
    return Inside(roots)(path)


class Inside:
    """:func:`inside` for many paths against the same roots (a compile's module files): the
    resolved roots and the resolved folders of the paths are worked out once each."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.written = [os.path.normpath(os.path.abspath(r)) for r in roots]
        self.real = [os.path.normpath(os.path.abspath(os.path.realpath(r))) for r in roots]
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> bool:
        written = os.path.normpath(os.path.abspath(path))
        if not any(_below_root(written, r) for r in self.written):
            return False
        return any(_below_root(self._real(written), r) for r in self.real)

    def _real(self, path: str) -> str:
        folder, name = os.path.split(path)
        if not name or os.path.islink(path):
            return os.path.realpath(path)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real, name)


def _below_root(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
