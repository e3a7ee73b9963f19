"""Module files read on every core before the fleet is expanded: a large fleet's own host files
(one or more per host) are most of what loading costs, and each is read on its own.

Each forked copy reads its share into a module cache of its own and sends back the files that
loaded without a problem; the caller's cache then takes them instead of reading them again.
A file that has a problem is left out, so the caller reads it when its turn comes and reports
it exactly where reading in one process would."""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence

from orchestrator import forks
from orchestrator.digest import remember_all, remembered
from orchestrator.loader.fleet import ModuleCache, ModuleFile, ModuleRef


def preload(cache: ModuleCache, refs: Sequence[ModuleRef], parts: int) -> None:
    """Read the files ``refs`` name in ``parts`` parts (one here, the others in forked copies)
    into ``cache``, which hands each one out when it is first asked for it."""
    wanted = list({r.path: r for r in refs if r.path not in cache.files}.values())
    chunks = forks.split(wanted, parts)
    copies = [forks.start(functools.partial(_sent, cache.roots, c)) for c in chunks[1:]]
    cache.preloaded.update(clean_loads(cache.roots, chunks[0]))
    for copy in copies:
        for data in forks.every_piece(copy) or ():  # none: its files are read here, in turn
            files, digests = pickle.loads(data)
            cache.preloaded.update(files)
            remember_all(digests)


def clean_loads(roots: tuple[str, ...], refs: Sequence[ModuleRef]) -> dict[str, ModuleFile]:
    """The files of ``refs`` that load without any problem, by path."""
    scratch = ModuleCache(roots)
    out = {}
    for ref in refs:
        before = len(scratch.problems)
        found = scratch.get(ref)
        if found is not None and len(scratch.problems) == before:
            out[ref.path] = found
    return out


def _sent(roots: tuple[str, ...], refs: Sequence[ModuleRef]) -> list[bytes]:
    files = clean_loads(roots, refs)
    return [pickle.dumps((files, remembered(list(files))), protocol=pickle.HIGHEST_PROTOCOL)]
