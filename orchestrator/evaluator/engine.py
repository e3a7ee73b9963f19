"""The fixpoint: every host's configuration, computed lazily option by option.

An option's value is computed on first use: its definitions whose `when` holds are kept at the
best priority, their expressions evaluated (which may read this or another host's options),
merged by type and validated. A value that is needed while it is being computed is a cycle and
is reported with the whole chain.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jmespath import exceptions as jexc

from orchestrator.errors import FleetErrors, Loc, Problem, excerpt, quoted
from orchestrator.evaluator.expressions import (
    EvalSignal,
    Expr,
    ExprFailure,
    ExprSyntaxError,
    checked_json,
    compile_expr,
    parse_template,
    plain,
    to_text,
    truthy,
)
from orchestrator.evaluator.merge import Conflict, kind_of, merge
from orchestrator.evaluator.shape import DYNAMIC, Def, Instance, Shape
from orchestrator.loader.fleet import FleetSpec, OptionDecl
from orchestrator.loader.yamlfile import Prio, locate
from orchestrator.naming import FORCE_PRIORITY, MKDEFAULT_PRIORITY
from orchestrator.validator import Finding, findings, option_validator
from orchestrator.validator.fast import compile_check

ABSENT: Any = object()
ERROR: Any = object()
# The first segment of a read of every option below a group (an option path has no empty
# segment): ("", "a") is all of group a, ("",) the whole configuration.
WHOLE = ""
# What hosts read of other hosts: reader -> {(host read, option or group path)}
Reads = dict[str, set[tuple[str, tuple[str, ...]]]]


class CycleError(EvalSignal):
    def __init__(self, chain: list[tuple[str, str, Loc | None]]) -> None:
        super().__init__("cycle")
        self.chain = chain


class Unusable(EvalSignal):
    """A value needed here already failed (and was reported); fail quietly in turn."""


@dataclass
class Frame:
    host: str
    what: str
    loc: Loc | None


@dataclass(frozen=True)
class Kept:
    """The definitions of an option that no `when` governs, and those kept of them (the best
    priority): the same for every host that has this list of definitions."""

    defs: list[Def]  # held, so that the list's id() stays its own while this is cached
    kept: list[Def]
    static: bool  # every kept definition is a plain value


@dataclass(frozen=True)
class Outcome:
    """Where a value came from, for `explain`."""

    value: Any
    kept: tuple[Def, ...] = ()
    active: tuple[Def, ...] = ()
    from_default: bool = False


class ConfigView:
    """A lazy view of a host's configuration below a group of options, for JMESPath."""

    __slots__ = ("host", "prefix")

    def __init__(self, host: HostEval, prefix: tuple[str, ...]) -> None:
        self.host = host
        self.prefix = prefix

    def get(self, key: str, default: Any = None) -> Any:
        return self.host.lookup((*self.prefix, key))

    def keys(self) -> list[str]:
        return [
            k for k in self.host.shape.trie.children.get(self.prefix, []) if self.get(k) is not None
        ]

    def values(self) -> list[Any]:
        return [v for v in (self.get(k) for k in self.keys()) if v is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self.get(k)) for k in self.keys()]

    def __iter__(self) -> Any:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __bool__(self) -> bool:
        return True  # a group always has declared options; never force them to find out

    def __eq__(self, other: object) -> bool:
        return bool(self.materialize() == plain(other))

    __hash__ = None  # type: ignore[assignment]

    def materialize(self) -> dict[str, Any]:
        """Every set option below this group as plain data (failed ones were reported: left out)."""
        out: dict[str, Any] = {}
        depth = len(self.prefix)
        self.host.ev.note_read(self.host.name, (WHOLE, *self.prefix))
        option = self.host.option
        known = self.host.values
        for decl in self.host.shape.trie.below(self.prefix):
            value = known.get(decl.path, _BUSY)  # computed already, the common case
            if value is _BUSY:
                value = option(decl)  # (which also says when it is being computed: a cycle)
            if value is ABSENT or value is ERROR:
                continue
            node = out
            for key in decl.path[depth:-1]:
                node = node.setdefault(key, {})
            node[decl.path[-1]] = value
        return out


class HostsView(dict[str, Any]):
    """`hosts` in expressions: reading a host that does not exist is an error, not null."""

    _plain: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The same entries as a plain dict, for functions (whose type checks want a dict)."""
        if self._plain is None:
            self._plain = dict(self)
        return self._plain

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            close = difflib.get_close_matches(str(key), list(self), n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            raise ExprFailure(f"reference to unknown host {key!r}", hint) from None


class HostEval:
    """One host's evaluation state."""

    def __init__(self, ev: Evaluator, name: str, info: dict[str, Any], shape: Shape) -> None:
        self.ev = ev
        self.name = name
        self.info = info
        self.shape = shape
        self.values: dict[tuple[str, ...], Any] = {}
        self.conds: dict[tuple[Any, int], bool] = {}
        self.contexts: dict[tuple[str, str], dict[str, Any]] = {}
        self.params: dict[tuple[str, str], dict[str, Any]] = {}
        self.view = ConfigView(self, ())

    # ------------------------------------------------------------------ reading
    def lookup(self, path: tuple[str, ...]) -> Any:
        self.ev.note_read(self.name, path)
        decl = self.shape.trie.options.get(path)
        if decl is not None:
            value = self.option(decl)
            if value is ERROR:
                raise Unusable
            return None if value is ABSENT else value
        if path in self.shape.trie.children:
            return ConfigView(self, path)
        if path not in self.ev.known_paths:
            name = ".".join(path)
            close = difflib.get_close_matches(name, self.ev.known_names, n=1)
            hint = f"did you mean {close[0]}?" if close else None
            raise ExprFailure(f"no module in the fleet declares option {name}", hint)
        return None

    def explained(self, decl: OptionDecl) -> Outcome | None:
        """The value of ``decl`` and how it was chosen (what `explain` shows), worked out again
        from its definitions by the rules :meth:`_compute` follows, from the conditions and
        values the evaluation already holds: explaining changes nothing of it. None for an
        option whose schema was refused."""
        if decl.broken:
            return None
        value = self.option(decl)
        defs = self.shape.defs.get(decl.path) or []
        active = tuple(d for d in defs if d.block is None or self._cond(d))
        best = min((d.priority for d in active), default=None)
        kept = tuple(d for d in active if d.priority == best)
        from_default = not kept and "default" in decl.schema
        return Outcome(value, kept, active, from_default)

    def option(self, decl: OptionDecl) -> Any:
        path = decl.path
        if path in self.values:
            value = self.values[path]
            if value is _BUSY:
                raise CycleError(self.ev.chain_from(self.name, decl.name))
            return value
        if path not in self.shape.defs and not decl.broken:
            # only its default: nothing to evaluate, so no frame and no cycle to watch for
            value = self.ev.checked_default(decl) if "default" in decl.schema else ABSENT
            self.values[path] = value
            return value
        self.values[path] = _BUSY
        self.ev.stack.append(Frame(self.name, decl.name, decl.loc))
        try:
            value = self._compute(decl)
        except RecursionError:
            if self.ev.too_deep is None:  # the deepest frame sees the whole chain
                self.ev.too_deep = [(f.host, f.what, f.loc) for f in self.ev.stack]
            raise
        except CycleError as exc:
            # Every option on the way is unusable; the outermost frame reports the cycle once.
            self.values[path] = ERROR
            if len(self.ev.stack) > 1:
                raise
            self.ev.report_cycle(exc.chain)
            value = ERROR
        finally:
            self.ev.stack.pop()
        self.values[path] = value
        return value

    # ------------------------------------------------------------------ computing
    def _compute(self, decl: OptionDecl) -> Any:
        if decl.broken:
            return ERROR  # its schema was refused and reported
        defs = self.shape.defs.get(decl.path)
        if not defs:  # the common case: only the option's default
            return self.ev.checked_default(decl) if "default" in decl.schema else ABSENT
        plan = self.ev.unconditional(defs)
        if plan is not None:  # no `when` among them: which are kept is the same on every host
            kept = plan.kept
        else:
            active = [d for d in defs if d.block is None or self._cond(d)]
            best = min((d.priority for d in active), default=0)
            kept = [d for d in active if d.priority == best]
        if not kept:
            return self.ev.checked_default(decl) if "default" in decl.schema else ABSENT
        if decl.schema.get("deprecated"):
            why = decl.schema.get("description", "")
            for d in kept:
                self.ev.warnings.append(Problem(d.loc, f"option {decl.name} is deprecated. {why}"))
        if plan.static if plan is not None else all(d.plain is not DYNAMIC for d in kept):
            return self.ev.static_value(decl, kept)
        return self._dynamic_value(decl, kept)

    def _dynamic_value(self, decl: OptionDecl, kept: list[Def]) -> Any:
        items: list[tuple[Any, Loc | None]] = []
        for d in kept:
            self.ev.stack[-1].loc = d.loc
            if d.plain is not DYNAMIC:
                items.append((d.plain, d.loc))
                continue
            try:
                items.append((self.resolve(d.raw, d.instance, d.loc), d.loc))
            except ExprFailure as exc:
                self.ev.problem(d.loc, f"{decl.name}: {exc.message}", exc.hint)
                return ERROR
            except Unusable:
                return ERROR
        return self.ev.merged(decl, kept, items, self.name)

    def _cond(self, d: Def) -> bool:
        key = d.block_key
        if key not in self.conds:
            block = d.block
            assert block is not None and block.when is not None
            self.ev.stack.append(Frame(self.name, "when", block.when_loc))
            try:
                self.conds[key] = truthy(plain(self.search(when_expr(block.when), d.instance)))
            except ExprFailure as exc:
                self.ev.problem(block.when_loc, exc.message, exc.hint)
                self.conds[key] = False
            except Unusable:
                self.conds[key] = False
            finally:
                self.ev.stack.pop()
        return self.conds[key]

    # ------------------------------------------------------------------ expressions
    def context(self, inst: Instance | None) -> dict[str, Any]:
        key = inst.key if inst is not None else ("", "")
        ctx = self.contexts.get(key)
        if ctx is None:
            ctx = {
                "config": self.view,
                "params": self.bound_params(inst) if inst is not None else {},
                "host": self.info,
                "hosts": self.ev.hosts_view,
                "fleet": self.ev.fleet_info,
            }
            self.contexts[key] = ctx
        return ctx

    def bound_params(self, inst: Instance) -> dict[str, Any]:
        cached = self.ev.static_params.get(inst.key) if inst.static_args else None
        if cached is not None:
            return cached
        if inst.key in self.params:
            return self.params[inst.key]
        args: dict[str, Any] = inst.ref.args or {}
        out: dict[str, Any] = {}
        for name, (schema, _loc) in inst.file.params.items():
            if name in args:
                out[name] = self.resolve(args[name], inst.importer, inst.ref.loc)
            elif "default" in schema:
                out[name] = schema["default"]
        self.ev.check_params(inst, out)
        if inst.static_args:
            self.ev.static_params[inst.key] = out
        else:
            self.params[inst.key] = out
        return out

    def resolve(self, raw: Any, inst: Instance | None, loc: Loc | None) -> Any:
        """A definition's value with every ``${...}`` evaluated for this host."""
        if isinstance(raw, str):
            if "${" not in raw:
                return raw
            try:
                template = parse_template(raw)
            except ExprSyntaxError as exc:
                raise ExprFailure(exc.message) from None
            whole = template.whole
            if whole is not None:
                return checked_json(plain(self.search(whole, inst)))
            return "".join(
                p if isinstance(p, str) else to_text(self.search(p, inst)) for p in template.parts
            )
        if isinstance(raw, dict):
            return {k: self.resolve(v, inst, loc) for k, v in raw.items()}
        if isinstance(raw, list):
            return [self.resolve(v, inst, loc) for v in raw]
        if isinstance(raw, Prio):
            raise ExprFailure("!default and !force apply to a whole option definition")
        return raw

    def search(self, expr: Expr, inst: Instance | None) -> Any:
        if expr.path is not None:
            value: Any = self.context(inst)
            decl = self.shape.trie.direct.get(expr.path) if expr.path[0] == "config" else None
            if decl is not None:  # config.a.b naming an option: what the walk below reaches
                found = self.option(decl)
                if found is ERROR:
                    raise Unusable
                return None if found is ABSENT else found
            for key in expr.path:
                get = getattr(value, "get", None)
                if get is None:
                    return None
                value = get(key)
            return value
        try:
            if expr.closure is not None:
                return expr.closure(self.context(inst), self.ev.jp_options.custom_functions)
            return expr.compiled.search(self.context(inst), options=self.ev.jp_options)
        except jexc.JMESPathTypeError as exc:
            raise ExprFailure(
                f"expression {quoted(expr.source, 80)} failed: {exc.function_name}() expected "
                f"{' or '.join(exc.expected_types)}, got {exc.actual_type}"
            ) from None
        except jexc.JMESPathError as exc:
            raise ExprFailure(f"expression {quoted(expr.source, 80)} failed: {exc}") from None


def when_expr(text: str) -> Expr:
    """A `when`/`assert` condition as a compiled expression (cached by text)."""
    found = _WHEN.get(text)
    if found is None:
        try:
            found = _WHEN[text] = compile_expr(text)
        except ExprSyntaxError as exc:
            raise ExprFailure(exc.message) from None
    return found


_WHEN: dict[str, Expr] = {}
_BUSY: Any = object()
_UNSET: Any = object()


# Stands in for a host that is not evaluated here (evaluator/partial.py): given the evaluator,
# the host's name and its `host` data, something with the ConfigView and lookup of a HostEval
Outside = Callable[["Evaluator", str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Others:
    """The hosts an evaluator does not evaluate (only those ``shapes`` has are): every host's
    `host` data in fleet order, and what stands in for the others."""

    infos: dict[str, dict[str, Any]]
    outside: Outside
    known_paths: set[tuple[str, ...]]


def host_info(spec: FleetSpec, name: str) -> dict[str, Any]:
    """A host's `host` in expressions: what fleet.yaml says of it."""
    host = spec.hosts[name]
    builder = spec.builders.get(host.builder)
    return {
        "name": name,
        "arch": builder.arch if builder else "x86_64",
        "builder": host.builder,
        "tags": list(host.tags),
        "channel": host.channel or (builder.channel if builder else "stable"),
        "deploy": host.deploy.as_dict(),
    }


class Evaluator:
    """Evaluates every host of a fleet; collects problems instead of stopping at the first.
    With ``others``, only the hosts ``shapes`` has are evaluated; the others are read
    through what it makes for them."""

    def __init__(
        self,
        spec: FleetSpec,
        shapes: dict[str, Shape],
        jp_options: Any,
        others: Others | None = None,
    ) -> None:
        self.spec = spec
        self.jp_options = jp_options
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.stack: list[Frame] = []
        self.static_params: dict[tuple[str, str], dict[str, Any]] = {}
        self._checked_params: set[tuple[str, str, str]] = set()
        self._validators: dict[int, Any] = {}
        self._fast: dict[int, Any] = {}
        self.too_deep: list[tuple[str, str, Loc | None]] | None = None
        self._valid: dict[tuple[int, str], list[Finding]] = {}
        self._static: dict[tuple[int, ...], Any] = {}
        self._defaults: dict[int, Any] = {}
        self._plans: dict[int, Kept | None] = {}
        self.fleet_info = {"name": spec.name, "channels": spec.channels}
        self.hosts: dict[str, HostEval] = {}
        self.hosts_view = HostsView()
        self.known_paths: set[tuple[str, ...]] = set()
        tries = {id(s.trie): s.trie for s in shapes.values()}
        for trie in tries.values():
            self.known_paths.update(trie.options)
            self.known_paths.update(trie.children)
        if others is not None:
            self.known_paths |= others.known_paths
        self.known_names = sorted({".".join(p) for p in self.known_paths if p})
        # the host whose assertions, warnings and roles are being checked (no frame is then on
        # the stack), and what every host read of the others (for incremental compiles)
        self.current: str | None = None
        self.reads: Reads = {}
        if others is None:
            for name in spec.hosts:
                self._add(name, host_info(spec, name), shapes[name])
            return
        for name, info in others.infos.items():
            if name in shapes:
                self._add(name, info, shapes[name])
            else:
                self.hosts_view[name] = {**info, "config": others.outside(self, name, info).view}

    def _add(self, name: str, info: dict[str, Any], shape: Shape) -> None:
        he = self.hosts[name] = HostEval(self, name, info, shape)
        self.hosts_view[name] = {**info, "config": he.view}

    def note_read(self, host: str, path: tuple[str, ...]) -> None:
        """``path`` of ``host`` is read: by another host, it is what that host depends on."""
        reader = self.stack[-1].host if self.stack else self.current
        if reader != host and reader is not None:
            found = self.reads.get(reader)
            if found is None:
                found = self.reads[reader] = set()
            found.add((host, path))

    # ------------------------------------------------------------------ problems
    def problem(
        self, loc: Loc | None, message: str, hint: str | None = None, hosts: Sequence[str] = ()
    ) -> None:
        self.problems.append(Problem(loc, message, hint, tuple(hosts)))

    def chain_from(self, host: str, what: str) -> list[tuple[str, str, Loc | None]]:
        start = max(i for i, f in enumerate(self.stack) if f.host == host and f.what == what)
        frames = self.stack[start:]
        return [(f.host, f.what, f.loc) for f in frames] + [(host, what, None)]

    def report_cycle(self, chain: list[tuple[str, str, Loc | None]]) -> None:
        steps = [f"{h}:{w}" + (f" ({loc})" if loc else "") for h, w, loc in chain]
        if len(steps) > 12:  # a long chain: its ends say where to look
            steps = [*steps[:6], f"... {len(steps) - 11} more ...", *steps[-5:]]
        first = next((loc for _h, _w, loc in chain if loc is not None), None)
        self.problem(
            first,
            "reference cycle: " + " -> ".join(steps),
            "a value may not depend on itself; break the chain",
        )

    # ------------------------------------------------------------------ values
    def checked_default(self, decl: OptionDecl) -> Any:
        key = id(decl)
        if key not in self._defaults:
            value = plain(decl.schema["default"])
            self._defaults[key] = self.validated(decl, value, [(value, decl.loc)], None)
        return self._defaults[key]

    def unconditional(self, defs: list[Def]) -> Kept | None:
        """What is kept of ``defs`` when none has a condition (cached by list: hosts share
        their lists of definitions); None when one has."""
        found = self._plans.get(id(defs), _UNSET)
        if found is _UNSET:
            found = None
            if all(d.block is None for d in defs):
                best = min(d.priority for d in defs)
                kept = [d for d in defs if d.priority == best]
                found = Kept(defs, kept, all(d.plain is not DYNAMIC for d in kept))
            self._plans[id(defs)] = found
        return found  # type: ignore[no-any-return]

    def static_value(self, decl: OptionDecl, kept: list[Def]) -> Any:
        key = (id(decl), *map(id, kept))
        if key not in self._static:
            self._static[key] = self.merged(decl, kept, [(d.plain, d.loc) for d in kept], None)
        return self._static[key]

    def merged(
        self,
        decl: OptionDecl,
        kept: list[Def],
        items: list[tuple[Any, Loc | None]],
        host: str | None,
    ) -> Any:
        kind = kind_of(decl.schema)
        for value, loc in items:
            if kind != "scalar" and not isinstance(value, list if kind == "array" else dict):
                self.validated(decl, value, [(value, loc)], kept[0] if len(kept) == 1 else None)
                return ERROR
        try:
            value = merge(kind, items, decl.name)
        except Conflict as exc:
            self._conflict(decl, kept, exc)
            return ERROR
        return self.validated(decl, value, items, kept[0] if len(kept) == 1 else None)

    def _conflict(self, decl: OptionDecl, kept: list[Def], exc: Conflict) -> None:
        places = ", ".join(f"{excerpt(v)} at {loc}" for v, loc in exc.places[:6])
        prio = kept[0].priority
        self.problem(
            exc.places[0][1],
            f"conflicting definitions of {exc.where} at priority {prio}: {places}",
            f"make them equal, or give one !force (priority {FORCE_PRIORITY}) or !default "
            f"({MKDEFAULT_PRIORITY})",
        )

    def validated(
        self, decl: OptionDecl, value: Any, items: list[tuple[Any, Loc | None]], only: Def | None
    ) -> Any:
        if value is ERROR:
            return ERROR
        fast = self._fast.get(id(decl), _UNSET)
        if fast is _UNSET:
            fast = self._fast[id(decl)] = compile_check(decl.schema)
        if fast is not None and fast(value):
            return value  # certainly valid: no jsonschema run needed
        vkey = (id(decl), _value_key(value))
        found = self._valid.get(vkey)
        if found is None:
            validator = self._validators.get(id(decl))
            if validator is None:
                validator = self._validators[id(decl)] = option_validator(decl.schema)
            found = findings(validator, value, decl.name)
            self._valid[vkey] = found
        if not found:
            return value
        for f in found:
            self.problems.append(Problem(self._where(f, items, only), f.message, f.hint))
        return ERROR

    def _where(
        self, f: Finding, items: list[tuple[Any, Loc | None]], only: Def | None
    ) -> Loc | None:
        if only is not None:
            return locate(only.raw, f.path, only.loc)
        if f.path and isinstance(f.path[0], int):
            index = f.path[0]
            for value, loc in items:  # concatenated arrays: find the definition of that item
                if isinstance(value, list) and index < len(value):
                    return loc
                index -= len(value) if isinstance(value, list) else 0
        return items[0][1] if len(items) == 1 else items[-1][1]

    def check_params(self, inst: Instance, values: dict[str, Any]) -> None:
        for name, (schema, _loc) in inst.file.params.items():
            if name not in values:
                continue
            key = (inst.key[0], name, _value_key(values[name]))
            if key in self._checked_params:
                continue
            self._checked_params.add(key)
            validator = option_validator(schema)
            for p in findings(validator, values[name], f"parameter {name}"):
                where = (
                    inst.ref.args.key_locs.get(name) if inst.ref.args is not None else None
                ) or inst.ref.loc
                self.problems.append(Problem(where, f"module {inst.file.path}: {p.message}"))

    # ------------------------------------------------------------------ whole fleet
    def run_host(self, he: HostEval) -> None:
        """Every option of one host (and, lazily, what it reads of other hosts)."""
        for decl in he.shape.trie.options.values():
            he.option(decl)

    def run(self) -> None:
        try:
            for he in self.hosts.values():
                self.run_host(he)
        except RecursionError:
            chain = self.too_deep or []
            steps = [f"{h}:{w}" + (f" ({loc})" if loc else "") for h, w, loc in chain]
            first = next((loc for _h, _w, loc in chain if loc is not None), None)
            raise FleetErrors(
                [
                    Problem(
                        first,
                        f"references nest deeper than evaluation can follow "
                        f"({len(chain)} steps: {' -> '.join(steps[:3])} -> ... -> "
                        f"{' -> '.join(steps[-2:])})",
                        "shorten the chain of options that read each other",
                    )
                ]
            ) from None


def _value_key(value: Any) -> str:
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, bool | int | float) or value is None:
        return f"{type(value).__name__}:{value!r}"
    return "j" + json.dumps(value, sort_keys=True, default=repr)


__all__ = [
    "ABSENT",
    "ERROR",
    "WHOLE",
    "ConfigView",
    "Evaluator",
    "ExprFailure",
    "HostEval",
]
