"""What a host is made of, before any value is computed: its module instances in order, the
options they declare, and every definition flattened to (option, value, priority, place).

Module expansion and option tries are shared between hosts; only expressions are per host.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import Loc, Problem, display_path, excerpt
from orchestrator.evaluator.expressions import ExprSyntaxError, has_template, parse_template
from orchestrator.loader.fleet import Block, ModuleCache, ModuleFile, ModuleRef, OptionDecl
from orchestrator.loader.library import read_library
from orchestrator.loader.yamlfile import Map, Prio, Seq, loc_of
from orchestrator.naming import PLAIN_PRIORITY
from orchestrator.paths import shipped_name


@dataclass(eq=False)
class Instance:
    """A module file bound to arguments; the unit of ordering, params and roles."""

    file: ModuleFile
    ref: ModuleRef
    key: tuple[str, str]
    importer: Instance | None
    static_args: bool


DYNAMIC: Any = object()
MAX_SHARED_PREFIXES = 64  # definitions of instance lists that hosts share, kept at a time


@dataclass(eq=False)
class Def:
    """One definition of one option."""

    option: OptionDecl
    raw: Any
    plain: Any  # the value when it holds no expression, else DYNAMIC
    priority: int
    loc: Loc
    block: Block | None
    block_key: tuple[tuple[str, str], int]
    instance: Instance


@dataclass
class Trie:
    """The options a set of modules declares, and the groups (prefixes) above them."""

    options: dict[tuple[str, ...], OptionDecl]
    children: dict[tuple[str, ...], list[str]]
    problems: list[Problem] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    # ("config", *path) -> the option at path, for the options no other option encloses:
    # an expression naming one reads it directly instead of group by group
    direct: dict[tuple[str, ...], OptionDecl] = field(default_factory=dict)
    _below: dict[tuple[str, ...], list[OptionDecl]] = field(default_factory=dict)

    def below(self, prefix: tuple[str, ...]) -> list[OptionDecl]:
        """The options inside a group, in path order (cached)."""
        found = self._below.get(prefix)
        if found is None:
            n = len(prefix)
            found = sorted(
                (d for p, d in self.options.items() if p[:n] == prefix), key=lambda d: d.path
            )
            self._below[prefix] = found
        return found


@dataclass
class Shape:
    instances: list[Instance]
    trie: Trie
    defs: dict[tuple[str, ...], list[Def]]
    renamed: dict[tuple[str, ...], tuple[tuple[str, ...], Loc]]


def args_key(args: Map | None) -> str:
    return json.dumps(args, sort_keys=True, default=repr) if args else ""


class ShapeBuilder:
    """Expands module references and flattens definitions, caching what hosts share."""

    def __init__(self, modules: ModuleCache) -> None:
        self.modules = modules
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._expansions: dict[tuple[str, str], list[Instance]] = {}
        self._tries: dict[tuple[str, ...], Trie] = {}
        self._flat: dict[tuple[tuple[str, str], int], list[Def]] = {}
        self._prefixes: dict[tuple[int, tuple[tuple[str, str], ...]], Any] = {}
        self._seen_problem_keys: set[tuple[str, str]] = set()
        # expansions that reach a module which did not load (or an import cycle): what a host
        # with one of these lacks makes errors that only follow from the first one
        self._broken: set[tuple[str, str]] = set()

    # ------------------------------------------------------------- expansion and import cycles
    def reaches_broken(self, refs: tuple[ModuleRef, ...]) -> bool:
        """Whether expanding ``refs`` (done already, by :meth:`expand`) met a module that
        failed to load, or an import cycle."""
        return any((r.path, args_key(r.args)) in self._broken for r in refs)

    def expand(self, refs: tuple[ModuleRef, ...]) -> list[Instance]:
        """Module instances in order: each reference's imports depth-first, then itself."""
        order: list[Instance] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            for inst in self._expand_ref(ref, None, ()):
                if inst.key not in seen:
                    seen.add(inst.key)
                    order.append(inst)
        return order

    def _expand_ref(
        self, ref: ModuleRef, importer: Instance | None, chain: tuple[ModuleRef, ...]
    ) -> list[Instance]:
        key = (ref.path, args_key(ref.args))
        if key in self._expansions:
            return self._expansions[key]
        if any(r.path == ref.path for r in chain):
            self._import_cycle(ref, chain)
            self._broken.update((r.path, args_key(r.args)) for r in (*chain, ref))
            return []
        file = self.modules.get(ref)
        if file is None:
            self._broken.add(key)
            return []
        inst = Instance(file, ref, key, importer, not _has_expr(ref.args))
        self._check_args(inst)
        out: list[Instance] = []
        for imp in file.imports:
            out.extend(self._expand_ref(imp, inst, (*chain, ref)))
            if (imp.path, args_key(imp.args)) in self._broken:
                self._broken.add(key)
        out.append(inst)
        self._expansions[key] = out
        return out

    def _import_cycle(self, ref: ModuleRef, chain: tuple[ModuleRef, ...]) -> None:
        start = next(i for i, r in enumerate(chain) if r.path == ref.path)
        steps = [*chain[start + 1 :], ref]
        text = " -> ".join(f"{r.path} (imported at {r.loc})" for r in steps)
        self.problems.append(Problem(ref.loc, f"import cycle: {chain[start].path} -> {text}"))

    def _check_args(self, inst: Instance) -> None:
        declared = inst.file.params
        args: dict[str, Any] = inst.ref.args or {}
        name = inst.file.path
        for key in args:
            if key not in declared:
                close = difflib.get_close_matches(key, list(declared), n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else (
                        f"parameters: {', '.join(declared)}"
                        if declared
                        else "it takes no parameters"
                    )
                )
                self._problem(
                    loc_of(args, key) or inst.ref.loc,
                    f"unknown parameter {key!r} for module {name}",
                    hint,
                )
        for key, (schema, _loc) in declared.items():
            if key not in args and "default" not in schema:
                self._problem(
                    inst.ref.loc,
                    f"missing parameter {key!r} for module {name}",
                    "bind it with `use: ... with: {" + key + ": ...}`",
                )

    def _problem(self, loc: Loc | None, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(loc, message, hint))

    # ------------------------------------------------------------- option declarations
    def trie(self, instances: list[Instance]) -> Trie:
        files = []
        seen = set()
        for inst in instances:
            if inst.file.options and inst.file.path not in seen:
                seen.add(inst.file.path)
                files.append(inst.file)
        key = tuple(f.path for f in files)
        if key not in self._tries:
            self._tries[key] = _build_trie(files)
        return self._tries[key]

    # ------------------------------------------------------------- definitions
    def shape(self, instances: list[Instance]) -> Shape:
        """The definitions of a host's module instances (:meth:`expand`'s answer), flattened
        against the options they declare."""
        trie = self.trie(instances)
        renamed: dict[tuple[str, ...], tuple[tuple[str, ...], Loc]] = {}
        for inst in instances:
            for old, (new, loc) in inst.file.renamed.items():
                renamed[tuple(old.split("."))] = (tuple(new.split(".")), loc)
        if not instances:
            return Shape(instances, trie, {}, renamed)
        # hosts share all their instances but their own last one (the fleet's defaults and a
        # builder's modules): those definitions are gathered once, the host's added to a copy
        defs = dict(self._shared_defs(instances[:-1], trie, renamed))
        for d in self._flatten(instances[-1], trie, renamed):
            defs[d.option.path] = [*defs.get(d.option.path, ()), d]
        return Shape(instances, trie, defs, renamed)

    def _shared_defs(
        self,
        instances: list[Instance],
        trie: Trie,
        renamed: dict[tuple[str, ...], tuple[tuple[str, ...], Loc]],
    ) -> dict[tuple[str, ...], list[Def]]:
        """The definitions of ``instances`` by option (cached; the lists are shared: never
        changed)."""
        key = (id(trie), tuple(inst.key for inst in instances))
        found = self._prefixes.get(key)
        if found is None:
            found = {}
            for inst in instances:
                for d in self._flatten(inst, trie, renamed):
                    found.setdefault(d.option.path, []).append(d)
            if len(self._prefixes) >= MAX_SHARED_PREFIXES:  # hosts each with several files
                del self._prefixes[next(iter(self._prefixes))]
            self._prefixes[key] = found
        return found

    def _flatten(
        self,
        inst: Instance,
        trie: Trie,
        renamed: dict[tuple[str, ...], tuple[tuple[str, ...], Loc]],
    ) -> list[Def]:
        key = (inst.key, id(trie))
        if key not in self._flat:
            walker = _Flattener(inst, trie, renamed, self.declared_elsewhere)
            self._flat[key] = walker.run()
            self.problems.extend(walker.problems)
            self.warnings.extend(walker.warnings)
        return self._flat[key]

    def declared_elsewhere(self, path: tuple[str, ...]) -> str | None:
        """A module that declares ``path`` (or options below it) though this host does not
        import it: one of the fleet's modules, else one shipped in the library."""
        for f in [*(f for f in self.modules.files.values() if f is not None), *_library()]:
            # the option itself, one below it (a group was set), or one above (inside a value)
            if any(_related(d.path, path) for d in f.options):
                return _module_name(f.path)
        return None


@functools.cache
def _library() -> tuple[ModuleFile, ...]:
    """The shipped library's modules, read once, only when a hint needs them."""
    return tuple(read_library()[0].values())


def _related(declared: tuple[str, ...], written: tuple[str, ...]) -> bool:
    n = min(len(declared), len(written))
    return declared[:n] == written[:n]


def _module_name(path: str) -> str:
    return shipped_name(path, roles=False) or display_path(path)


def _build_trie(files: list[ModuleFile]) -> Trie:
    options: dict[tuple[str, ...], OptionDecl] = {}
    children: dict[tuple[str, ...], set[str]] = {}
    problems: list[Problem] = []
    for f in files:
        for decl in f.options:
            if decl.path in options:
                first = options[decl.path]
                problems.append(
                    Problem(
                        decl.loc, f"option {decl.name} is declared twice (first at {first.loc})"
                    )
                )
                continue
            options[decl.path] = decl
    for path, decl in options.items():
        for i in range(1, len(path)):
            outer = path[:i]
            if outer in options:
                problems.append(
                    Problem(
                        decl.loc,
                        f"option {decl.name} is declared inside option "
                        f"{options[outer].name} (declared at {options[outer].loc})",
                    )
                )
            children.setdefault(outer, set()).add(path[i])
        children.setdefault((), set()).add(path[0])
    trie = Trie(options, {k: sorted(v) for k, v in children.items()}, problems)
    trie.names = sorted(".".join(p) for p in options)
    trie.direct = {
        ("config", *p): d
        for p, d in options.items()
        if not any(p[:i] in options for i in range(1, len(p)))
    }
    return trie


def _has_expr(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, dict):
        return any(_has_expr(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expr(v) for v in value)
    if isinstance(value, Prio):
        return _has_expr(value.value)
    return False


class _Flattener:
    """Walks a module's `config` blocks and attaches each value to the option it defines."""

    def __init__(
        self,
        inst: Instance,
        trie: Trie,
        renamed: dict[tuple[str, ...], tuple[tuple[str, ...], Loc]],
        declared_elsewhere: Callable[[tuple[str, ...]], str | None],
    ) -> None:
        self.inst, self.trie, self.renamed = inst, trie, renamed
        self.declared_elsewhere = declared_elsewhere
        self.renamed_groups = {old[:i] for old in renamed for i in range(1, len(old))}
        self.out: list[Def] = []
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def run(self) -> list[Def]:
        for index, block in enumerate(self.inst.file.blocks):
            if block.when is not None:
                self._check_expr(block.when, block.when_loc)
            self._walk(block.defs, (), PLAIN_PRIORITY, block, index)
        return self.out

    def _check_expr(self, text: str, loc: Loc | None) -> None:
        try:
            parse_template("${" + text + "}")
        except ExprSyntaxError as exc:
            self.problems.append(Problem(loc, exc.message))

    def _walk(self, m: Map, prefix: tuple[str, ...], prio: int, block: Block, index: int) -> None:
        for key, raw in m.items():
            loc = m.key_locs.get(key, m.loc)
            value, p = (raw.value, raw.priority) if isinstance(raw, Prio) else (raw, prio)
            parts = tuple(key.split("."))
            if "" in parts:
                self.problems.append(
                    Problem(loc, f"{excerpt(key)}: empty segment in an option path")
                )
                continue
            self._one(prefix, parts, value, p, loc, block, index)

    def _one(
        self,
        prefix: tuple[str, ...],
        parts: tuple[str, ...],
        value: Any,
        prio: int,
        loc: Loc,
        block: Block,
        index: int,
    ) -> None:
        path = prefix
        for i, part in enumerate(parts):
            path = (*path, part)
            path = self._rename(path, loc)
            decl = self.trie.options.get(path)
            if decl is not None:
                self._emit(decl, _nest(parts[i + 1 :], value), prio, loc, block, index)
                return
            if path not in self.trie.children and path not in self.renamed_groups:
                self._unknown(path, (*prefix, *parts), loc)
                return
        if isinstance(value, Map):
            self._walk(value, path, prio, block, index)
        else:
            below = ", ".join(self.trie.children[path][:8])
            self.problems.append(
                Problem(
                    loc,
                    f"{'.'.join(path)} is a group of options, not an option",
                    f"set one of: {below}",
                )
            )

    def _rename(self, path: tuple[str, ...], loc: Loc) -> tuple[str, ...]:
        target = self.renamed.get(path)
        if target is None:
            return path
        new, _where = target
        self.warnings.append(
            Problem(
                loc,
                f"option {'.'.join(path)} is renamed to {'.'.join(new)}",
                f"write {'.'.join(new)}",
            )
        )
        return new

    def _unknown(self, path: tuple[str, ...], full: tuple[str, ...], loc: Loc) -> None:
        """``path`` is where the host's options end; ``full`` is the whole path as written."""
        name = ".".join(path)
        close = difflib.get_close_matches(name, self.trie.names, n=1, cutoff=0.6)
        if not close:
            prefix = path[:-1]
            close = [".".join((*prefix, c)) for c in self.trie.children.get(prefix, [])[:1]]
        hint = f"did you mean {close[0]}?" if close else "no module on this host declares it"
        elsewhere = self.declared_elsewhere(full)
        if elsewhere is not None:
            hint = f"{elsewhere} declares it, and this host does not import it: add it"
        self.problems.append(Problem(loc, f"unknown option {'.'.join(full)}", hint))

    def _emit(
        self, decl: OptionDecl, value: Any, prio: int, loc: Loc, block: Block, index: int
    ) -> None:
        problems_before = len(self.problems)
        dynamic = _has_expr(value)
        if dynamic:
            self._parse_templates(value, loc)
        plain = DYNAMIC if dynamic else self._plain(value, loc)
        if len(self.problems) > problems_before:
            return
        conditional = block if block.when is not None else None
        self.out.append(
            Def(decl, value, plain, prio, loc, conditional, (self.inst.key, index), self.inst)
        )

    def _parse_templates(self, value: Any, loc: Loc) -> None:
        """Parse every ``${...}`` now, where the stack is shallow: a syntax error is reported
        once, and evaluation, however deep its chain of references, finds them compiled."""
        stack = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, str) and has_template(node):
                try:
                    parse_template(node)
                except ExprSyntaxError as exc:
                    self.problems.append(Problem(loc, exc.message))
            elif isinstance(node, dict):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)

    def _plain(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, Prio):
            self.problems.append(
                Problem(
                    value.loc,
                    "!default and !force apply to a whole option "
                    "definition, not to a part of its value",
                )
            )
            return None
        if isinstance(value, dict):
            return {k: self._plain(v, loc) for k, v in value.items()}
        if isinstance(value, list):
            return [self._plain(v, loc) for v in value]
        return value


def _nest(rest: tuple[str, ...], value: Any) -> Any:
    for key in reversed(rest):
        value = {key: value}
    return value


__all__ = ["DYNAMIC", "Def", "Instance", "Seq", "Shape", "ShapeBuilder", "Trie"]
