"""The module library shipped with orchestrate, loaded whole (for `options --library`, the
shipped roles' argument specs and docs/options.md)."""

from __future__ import annotations

import os

from orchestrator.errors import FleetErrors, Loc
from orchestrator.loader.fleet import ModuleCache, ModuleFile, ModuleRef
from orchestrator.paths import LIBRARY_PREFIX, library_root


def library_modules() -> dict[str, ModuleFile]:
    """Every module of the shipped library, by its `orchestrate:` name."""
    root = library_root()
    cache = ModuleCache((root,))
    out = {}
    for base, _dirs, names in sorted(os.walk(root)):
        for n in sorted(names):
            if n.endswith(".yaml"):
                path = os.path.join(base, n)
                name = LIBRARY_PREFIX + os.path.relpath(path, root)
                f = cache.get(ModuleRef(path, None, Loc(path, 1, 1)))
                if f is not None:
                    out[name] = f
    if cache.problems:  # a broken shipped module: the installation itself is damaged
        raise FleetErrors(cache.problems)
    return out
