"""Evaluate a whole fleet: shapes for every host, the fixpoint, then assertions, warnings and
the roles each host runs. The whole fleet is always evaluated, so cross-host values are right
whatever subset a later command selects."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import jmespath

from orchestrator.errors import FleetErrors, Loc, Problem
from orchestrator.evaluator import parallel
from orchestrator.evaluator.deep import TooDeep, run_deep
from orchestrator.evaluator.engine import (
    ERROR,
    Evaluator,
    ExprFailure,
    HostEval,
    Unusable,
    when_expr,
)
from orchestrator.evaluator.expressions import load_lib_functions, make_functions, plain, truthy
from orchestrator.evaluator.shape import Instance, ShapeBuilder
from orchestrator.loader.fleet import FleetSpec, HealthCheck, ModuleCache, ModuleFile, OptionDecl
from orchestrator.loader.preload import preload
from orchestrator.paths import library_functions_dir


@dataclass(frozen=True)
class RoleUse:
    """A role a host runs, from the module instance that brings it."""

    name: str
    module: str
    generated: bool
    params: dict[str, Any]


@dataclass(frozen=True)
class HostResult:
    name: str
    info: dict[str, Any]
    config: dict[str, Any]
    roles: tuple[RoleUse, ...]
    # the `secrets:` entries of the host's modules (name or glob, owner/group/mode, where):
    # they set how a secret is installed; which secrets a host gets comes from its config
    secret_decls: tuple[tuple[str, dict[str, str], Loc | None], ...] = ()
    # what its evaluation read of other hosts: (host, option or group path), see engine.WHOLE
    reads: frozenset[tuple[str, tuple[str, ...]]] = frozenset()
    # its modules' health checks whose `when` holds, with their expressions evaluated
    checks: tuple[dict[str, Any], ...] = ()


@dataclass
class Evaluation:
    """The evaluated fleet: what the compiler, query and explain read."""

    spec: FleetSpec
    hosts: dict[str, HostResult]
    evaluator: Evaluator
    modules: dict[str, ModuleFile]
    warnings: list[Problem]
    # only with keep_going: what evaluate() would have raised, and the hosts that import a
    # module that did not load
    problems: list[Problem] = field(default_factory=list)
    broken: frozenset[str] = frozenset()

    def host_eval(self, name: str) -> HostEval:
        return self.evaluator.hosts[name]

    def option_decls(self) -> dict[str, tuple[OptionDecl, list[str]]]:
        """Every declared option in the fleet, with the hosts that have it."""
        out: dict[str, tuple[OptionDecl, list[str]]] = {}
        for name, he in self.evaluator.hosts.items():
            for decl in he.shape.trie.options.values():
                out.setdefault(decl.name, (decl, []))[1].append(name)
        return out


def role_name(file: ModuleFile, fleet_root: str) -> str:
    """A module's role: its `role:` name, else one derived from its path in the fleet."""
    if file.role:
        return file.role
    import os

    rel = os.path.relpath(file.path, fleet_root)
    if rel.startswith(".."):
        rel = os.path.basename(file.path)
    stem = re.sub(r"\.ya?ml$", "", rel)
    return re.sub(r"[^a-z0-9_]", "_", stem.lower()).strip("_") or "module"


def evaluate(spec: FleetSpec, keep_going: bool = False) -> Evaluation:
    """Evaluate every host; raise FleetErrors with every problem found (with ``keep_going``,
    return the evaluation with its problems instead: `options` and `explain` answer from it).

    When a module does not load (invalid YAML, not found, an import cycle), only the problems
    that do not follow from it are reported: the hosts that import it are not checked further,
    since their unknown options and missing values would only repeat the first error.

    Evaluation follows references depth-first (a host reading a host reading a host ...), so
    it runs where a chain of ten thousand reads fits: a thread with a large stack and a
    recursion limit to match (see deep.py)."""
    try:
        return run_deep(_evaluate, spec, keep_going)
    except TooDeep:
        raise FleetErrors(
            [Problem(Loc(spec.file, 1, 1), "the fleet's values nest deeper than can be evaluated")]
        ) from None


def _evaluate(spec: FleetSpec, keep_going: bool) -> Evaluation:
    cache = ModuleCache(spec.module_roots)
    builder = ShapeBuilder(cache)
    refs_of = {}
    for name, host in spec.hosts.items():
        b = spec.builders.get(host.builder)
        refs_of[name] = spec.defaults + (b.modules if b else ()) + host.modules
    parts = 1 if keep_going else parallel.parts_wanted(len(spec.hosts))
    if parts > 1:  # the hosts' own files, read on every core
        preload(cache, [r for host in spec.hosts.values() for r in host.modules], parts)
    # each host's modules expanded once (hosts share the expansions of the modules they share)
    instances = {name: builder.expand(refs) for name, refs in refs_of.items()}
    broken = frozenset(n for n, refs in refs_of.items() if builder.reaches_broken(refs))
    # the library's functions first: a fleet function of the same name is then the one
    # reported as defined twice, in the fleet's file
    lib_dirs = (library_functions_dir(), *spec.lib_dirs)
    extra, lib_problems = load_lib_functions(lib_dirs, spec.file)
    first = [*cache.problems, *builder.problems, *lib_problems]
    if broken and not keep_going:
        raise FleetErrors(first, (_unchecked(broken),))
    shapes = {name: builder.shape(found) for name, found in instances.items()}
    problems = [*cache.problems, *builder.problems, *lib_problems]
    for shape in {id(s.trie): s for s in shapes.values()}.values():
        problems.extend(shape.trie.problems)
    # Evaluation goes on after structural problems (bad definitions are left out), so that one
    # run reports type errors and conflicts too; assertions, which assume a sound
    # configuration, are only checked when there were none.
    options = jmespath.Options(custom_functions=make_functions(extra))
    files = {p: f for p, f in cache.files.items() if f is not None}
    if parts > 1 and not problems:
        joined = _in_parts(Evaluator(spec, shapes, options), parts, builder.warnings, files)
        if joined is not None:
            return joined
    ev = Evaluator(spec, shapes, options)  # afresh: a part that gave up left values behind
    ev.run()
    warnings = [*builder.warnings, *ev.warnings]
    failed: dict[tuple[Loc | None, str], list[str]] = {}
    results = {
        name: finish_host(ev, he, spec, warnings, failed if not problems else None)
        for name, he in ev.hosts.items()
    }
    for (loc, message), names in failed.items():
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        ev.problem(loc, f"assertion failed on {', '.join(names[:5])}{more}: {message}", hosts=names)
    if (problems or ev.problems) and not keep_going:
        raise FleetErrors([*problems, *ev.problems])
    found = list(dict.fromkeys(first if broken else [*problems, *ev.problems]))
    return Evaluation(spec, results, ev, files, list(dict.fromkeys(warnings)), found, broken)


def _in_parts(
    ev: Evaluator, parts: int, shape_warnings: list[Problem], files: dict[str, ModuleFile]
) -> Evaluation | None:
    """The evaluation made in ``parts`` parts; None when a part met something to report."""
    spec = ev.spec
    done = parallel.evaluate_parts(ev, parts, _finisher(spec), _rebuilt)
    if done is None:
        return None
    results = {d.result.name: d.result for d in done}
    warnings = [*shape_warnings, *(w for d in done for w in d.warnings)]
    return Evaluation(spec, results, ev, files, list(dict.fromkeys(warnings)))


def _finisher(spec: FleetSpec) -> parallel.Finish:
    def finish(
        ev: Evaluator,
        he: HostEval,
        warnings: list[Problem],
        failed: dict[tuple[Loc | None, str], list[str]],
    ) -> HostResult:
        return finish_host(ev, he, spec, warnings, failed)

    return finish


def _rebuilt(
    he: HostEval, config: dict[str, Any], roles: Any, decls: Any, reads: Any, checks: Any
) -> HostResult:
    """A host another part finished, from what it sent."""
    return HostResult(he.name, he.info, config, roles, decls, reads, checks)


def _unchecked(broken: frozenset[str]) -> str:
    names = sorted(broken)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return (
        f"{', '.join(names[:5])}{more} not checked further: a module they import did not load, "
        "and what follows from that would only repeat it"
    )


def finish_host(
    ev: Evaluator,
    he: HostEval,
    spec: FleetSpec,
    warnings: list[Problem],
    failed: dict[tuple[Loc | None, str], list[str]] | None,
) -> HostResult:
    """A host's assertions and warnings checked, its roles and its whole configuration: once
    done, every value of the host is computed, and so is everything it reads of others."""
    ev.current = he.name
    try:
        return _finished(ev, he, spec, warnings, failed)
    finally:
        ev.current = None


def _finished(
    ev: Evaluator,
    he: HostEval,
    spec: FleetSpec,
    warnings: list[Problem],
    failed: dict[tuple[Loc | None, str], list[str]] | None,
) -> HostResult:
    roles: list[RoleUse] = []
    decls: list[tuple[str, dict[str, str], Loc | None]] = []
    checks: list[dict[str, Any] | None] = []
    for inst in he.shape.instances:
        f = inst.file
        if f.params:
            _bind(ev, he, inst)  # parameters are checked even where no expression reads them
        for check in f.assertions:
            if failed is not None and not _holds(ev, he, inst, check.expr, check.loc):
                failed.setdefault((check.loc, check.message), []).append(he.name)
        for check in f.warnings:
            if _holds(ev, he, inst, check.expr, check.loc):
                warnings.append(
                    Problem(check.loc, f"host {he.name}: {check.message}", hosts=(he.name,))
                )
        if (f.role or f.tasks is not None) and (
            f.role_when is None or _holds(ev, he, inst, f.role_when, f.role_when_loc)
        ):
            params = _params(he, inst) if f.params else {}
            roles.append(RoleUse(role_name(f, spec.root), f.path, f.tasks is not None, params))
        decls.extend((n, a, f.loc) for n, a in f.secrets.items())
        checks.extend(_health(ev, he, inst, c) for c in f.checks)
    config = he.view.materialize()
    reads = frozenset(ev.reads.pop(he.name, ()))  # all of them: nothing of the host runs now
    found = tuple(c for c in checks if c is not None)
    return HostResult(he.name, he.info, config, tuple(roles), tuple(decls), reads, found)


def _health(
    ev: Evaluator, he: HostEval, inst: Instance, check: HealthCheck
) -> dict[str, Any] | None:
    """A health check for this host, its `${...}` evaluated (None where `when` does not hold,
    or where an expression failed: that is reported)."""
    if check.when is not None and not _holds(ev, he, inst, check.when, check.loc):
        return None
    try:
        spec = plain(he.resolve(check.spec, inst, check.loc))
    except ExprFailure as exc:
        ev.problem(check.loc, exc.message, exc.hint)
        return None
    except Unusable:
        return None
    problem = _health_problem(spec, set(ev.hosts))
    if problem:
        ev.problem(check.loc, f"check {check.name!r}: {problem}")
        return None
    return {"name": check.name, **spec}


def _health_problem(spec: dict[str, Any], hosts: set[str]) -> str:
    """What is wrong with a check once its expressions are evaluated ("" when nothing)."""
    ranges = {"timeout": (1, 3600), "interval": (1, 600)}
    kind = next(k for k in ("command", "http", "tcp") if k in spec)
    body = spec[kind]
    if kind == "tcp":
        ranges["port"] = (1, 65535)
    if kind == "http" and "status" in body:
        ranges["status"] = (100, 599)
    for key, (low, high) in ranges.items():
        value = body.get(key) if key in ("port", "status") else spec.get(key)
        if value is not None and not (type(value) is int and low <= value <= high):
            return f"{key} is {value!r}: give a whole number from {low} to {high}"
    for key in ("output", "body"):
        if isinstance(body.get(key), str):
            try:
                re.compile(body[key])
            except re.error as exc:
                return f"{key} is not a regular expression: {exc}"
    origin = body.get("from", "control")
    if origin not in ("control", "self") and origin not in hosts:
        return f"from is {origin!r}: control, self or a host of the fleet"
    return ""


def _holds(ev: Evaluator, he: HostEval, inst: Instance, expr: str, loc: Loc | None) -> bool:
    try:
        value = plain(he.search(when_expr(expr), inst))
    except ExprFailure as exc:
        ev.problem(loc, exc.message, exc.hint)
        return False
    except Unusable:
        return True  # what it reads already failed and was reported
    return value is not ERROR and truthy(value)


def _params(he: HostEval, inst: Instance) -> dict[str, Any]:
    """A role's bound parameters; {} when binding failed (`_bind` reported why)."""
    try:
        return he.bound_params(inst)
    except (ExprFailure, Unusable):
        return {}


def _bind(ev: Evaluator, he: HostEval, inst: Instance) -> None:
    try:
        he.bound_params(inst)
    except ExprFailure as exc:
        ev.problem(inst.ref.loc, exc.message, exc.hint)
    except Unusable:
        pass
