"""The module library shipped with orchestrate, loaded whole (for `options --library`, the
shipped roles' argument specs, docs/options.md and the evaluator's "did you mean" hints)."""

from __future__ import annotations

import os

from orchestrator.errors import FleetErrors, Loc
from orchestrator.loader.fleet import ModuleCache, ModuleFile, ModuleRef
from orchestrator.paths import library_root, orchestrate_ref


def library_files() -> list[tuple[str, str]]:
    """Every module file of the shipped library as (`orchestrate:` name, path), sorted."""
    root = library_root()
    out = []
    for base, _dirs, names in sorted(os.walk(root)):
        for n in sorted(names):
            if n.endswith(".yaml"):
                path = os.path.join(base, n)
                out.append((orchestrate_ref(os.path.relpath(path, root)), path))
    return out


def read_library() -> tuple[dict[str, ModuleFile], ModuleCache]:
    """The library's modules that load, by name, and the cache holding the problems of those
    that do not."""
    cache = ModuleCache((library_root(),))
    out = {}
    for name, path in library_files():
        f = cache.get(ModuleRef(path, None, Loc(path, 1, 1)))
        if f is not None:
            out[name] = f
    return out, cache


def library_modules() -> dict[str, ModuleFile]:
    """Every module of the shipped library, by its `orchestrate:` name."""
    out, cache = read_library()
    if cache.problems:  # a broken shipped module: the installation itself is damaged
        raise FleetErrors(cache.problems)
    return out
