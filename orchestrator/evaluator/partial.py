"""Some hosts evaluated again, the others read as an earlier evaluation left them: what an
incremental compile (compiler/incremental.py) evaluates after an edit.

A host not evaluated again answers for its options from what it was (the values other hosts
read of it, kept by the last compile, else its whole configuration from the build); its trie
says which paths are options and which are groups, as its shape did. Anything to report (a
problem, a warning, a failed assertion) gives up: the caller then compiles the whole fleet,
which reports it exactly as it always has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath

from orchestrator.errors import Loc, Problem
from orchestrator.evaluator.deep import TooDeep, run_deep
from orchestrator.evaluator.engine import ABSENT, ConfigView, Evaluator, ExprFailure, Others
from orchestrator.evaluator.expressions import load_lib_functions, make_functions
from orchestrator.evaluator.fleet import HostResult, finish_host
from orchestrator.evaluator.shape import Shape, ShapeBuilder, Trie
from orchestrator.loader.fleet import FleetSpec, ModuleCache, ModuleFile, OptionDecl
from orchestrator.paths import library_functions_dir

Path = tuple[str, ...]
_MISSING: Any = object()


@dataclass(frozen=True)
class TrieKey:
    """What of a host's trie its readers can tell: its options and its groups."""

    options: tuple[Path, ...]
    children: tuple[tuple[Path, tuple[str, ...]], ...]

    @staticmethod
    def of(trie: Trie) -> TrieKey:
        return TrieKey(
            tuple(sorted(trie.options)),
            tuple(sorted((p, tuple(c)) for p, c in trie.children.items())),
        )

    def paths(self) -> set[Path]:
        """Every option and group path (what `known_paths` holds of this trie)."""
        return {*self.options, *(p for p, _c in self.children)}

    def stand_in(self) -> Trie:
        """A trie with these options (schemas left out: nothing is validated against them)."""
        where = Loc("<earlier compile>", 1, 1)
        options = {p: OptionDecl(p, {}, where) for p in self.options}
        return Trie(options, {p: list(c) for p, c in self.children})


SHIFT = 20  # a read's code: the number of the host read << SHIFT | the number of its path


class Paths:
    """Option and group paths by number, as reads are kept (codes: see :data:`SHIFT`)."""

    def __init__(self, paths: list[Path] | None = None) -> None:
        self.paths: list[Path] = paths or []
        self._ids = {p: i for i, p in enumerate(self.paths)}

    def id(self, path: Path) -> int:
        found = self._ids.get(path)
        if found is None:
            found = self._ids[path] = len(self.paths)
            self.paths.append(path)
        return found

    def __getstate__(self) -> list[Path]:
        return self.paths

    def __setstate__(self, paths: list[Path]) -> None:
        self.__init__(paths)  # type: ignore[misc]


@dataclass
class Frozen:
    """The hosts not evaluated again: each one's trie and number, the values others read of
    them (by read code), and a host's whole configuration from the build when something else
    of it is read."""

    shapes: dict[str, FrozenShape]  # each host's trie (hosts share them)
    number: dict[str, int]
    paths: Paths
    exports: dict[int, Any]
    config: Callable[[str], dict[str, Any]]

    def host(self, ev: Evaluator, name: str, info: dict[str, Any]) -> FrozenHost:
        return FrozenHost(ev, name, info, self)


class FrozenShape:
    """What a FrozenHost has of a shape: its trie."""

    __slots__ = ("trie",)

    def __init__(self, trie: Trie) -> None:
        self.trie = trie


class FrozenHost:
    """A host as the last compile left it, read through the same ConfigView as any other."""

    __slots__ = ("_base", "_frozen", "_values", "ev", "info", "name", "shape", "view")

    def __init__(self, ev: Evaluator, name: str, info: dict[str, Any], frozen: Frozen) -> None:
        self.ev = ev
        self.name = name
        self.info = info
        self.shape = frozen.shapes[name]
        self._base = frozen.number[name] << SHIFT
        self._frozen = frozen
        self._values: dict[Path, Any] | None = None
        self.view = ConfigView(self, ())  # type: ignore[arg-type]

    @property
    def values(self) -> dict[Path, Any]:
        if self._values is None:
            config = self._frozen.config(self.name)
            self._values = {p: walk(config, p) for p in self.shape.trie.options}
        return self._values

    def option(self, decl: OptionDecl) -> Any:
        return self.values[decl.path]

    def lookup(self, path: Path) -> Any:
        self.ev.note_read(self.name, path)
        if path in self.shape.trie.options:
            code = self._base | self._frozen.paths.id(path)
            exports = self._frozen.exports
            found = exports.get(code, _MISSING)
            if found is _MISSING:
                value = self.values[path]
                found = exports[code] = None if value is ABSENT else value
            return found
        if path in self.shape.trie.children:
            return ConfigView(self, path)  # type: ignore[arg-type]
        if path not in self.ev.known_paths:
            raise ExprFailure(f"no module in the fleet declares option {'.'.join(path)}")
        return None


def walk(config: dict[str, Any], path: Path) -> Any:
    """The value at ``path`` of a materialized configuration; ABSENT where it has none."""
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return ABSENT
        node = node[key]
    return node


@dataclass(frozen=True)
class Partial:
    """The hosts evaluated again: their results and shapes, and the module files they read."""

    results: dict[str, HostResult]
    shapes: dict[str, Shape]
    files: dict[str, ModuleFile]


def evaluate_some(
    spec: FleetSpec,
    names: list[str],
    others: Others,
    loaded: dict[str, ModuleFile] | None = None,
) -> Partial | None:
    """The hosts ``names`` (those ``spec`` has) evaluated, the others read through what
    ``others`` makes for them (a :class:`Frozen`'s hosts); None when there is anything to
    report (or references nest too deep), which a full compile reports. ``loaded``: module
    files as an earlier compile loaded them without a problem (their content is the same)."""
    try:
        return run_deep(_evaluate_some, spec, names, others, dict(loaded or {}))
    except TooDeep:
        return None


def _evaluate_some(
    spec: FleetSpec, names: list[str], others: Others, loaded: dict[str, ModuleFile]
) -> Partial | None:
    cache = ModuleCache(spec.module_roots)
    cache.preloaded.update(loaded)
    builder = ShapeBuilder(cache)
    refs_of = {}
    for name in names:
        host = spec.hosts[name]
        b = spec.builders.get(host.builder)
        refs_of[name] = spec.defaults + (b.modules if b else ()) + host.modules
    instances = {name: builder.expand(refs) for name, refs in refs_of.items()}
    if any(builder.reaches_broken(refs) for refs in refs_of.values()):
        return None
    lib_dirs = (library_functions_dir(), *spec.lib_dirs)
    extra, lib_problems = load_lib_functions(lib_dirs, spec.file)
    shapes = {name: builder.shape(found) for name, found in instances.items()}
    problems = [*cache.problems, *builder.problems, *lib_problems, *builder.warnings]
    if problems or any(s.trie.problems for s in shapes.values()):
        return None
    options = jmespath.Options(custom_functions=make_functions(extra))
    ev = Evaluator(spec, shapes, options, others)
    warnings: list[Problem] = []
    failed: dict[tuple[Loc | None, str], list[str]] = {}
    try:
        results = {n: finish_host(ev, ev.hosts[n], spec, warnings, failed) for n in names}
    except RecursionError:
        return None
    if ev.problems or ev.warnings or warnings or failed or ev.too_deep is not None:
        return None
    files = {p: f for p, f in cache.files.items() if f is not None}
    return Partial(results, shapes, files)
