"""Fleet discovery and the typed view of fleet.yaml and module files.

Files are parsed once each, checked against the shipped schemas (every problem reported), and
turned into frozen records; nothing here evaluates an expression.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import FleetErrors, Loc, Problem, display_path, excerpt, fail
from orchestrator.loader.files import Inside, inside
from orchestrator.loader.yamlfile import Map, Prio, Seq, load_file, loc_of
from orchestrator.naming import RESERVED_HOSTS, option_path_problem
from orchestrator.paths import FLEET_FILE, library_path, library_root
from orchestrator.validator import check_option_schema, document_problems


@dataclass(frozen=True)
class ModuleRef:
    """A reference to a module file, with the arguments bound to its parameters."""

    path: str
    args: Map | None
    loc: Loc
    written: str = ""  # the path as the fleet wrote it, for messages


@dataclass(frozen=True)
class Builder:
    name: str
    arch: str
    channel: str
    modules: tuple[ModuleRef, ...]
    loc: Loc


@dataclass(frozen=True)
class Deploy:
    host: str
    user: str
    port: int
    build_on: str
    # magic rollback: seconds a host waits for the control node's confirmation after an apply
    confirm_timeout: int = 30
    keep_generations: int = 10  # generations kept on the host

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "user": self.user,
            "port": self.port,
            "build_on": self.build_on,
            "confirm_timeout": self.confirm_timeout,
            "keep_generations": self.keep_generations,
        }


@dataclass(frozen=True)
class HostSpec:
    name: str
    builder: str
    tags: tuple[str, ...]
    channel: str | None
    modules: tuple[ModuleRef, ...]
    deploy: Deploy
    loc: Loc


@dataclass(frozen=True)
class ImageSpec:
    name: str
    hosts: tuple[str, ...]
    format: str
    size: str | None
    include_host_key: bool
    loc: Loc


@dataclass(frozen=True)
class FleetSpec:
    """fleet.yaml, checked and typed."""

    root: str
    file: str
    name: str
    channels: dict[str, dict[str, Any]]
    defaults: tuple[ModuleRef, ...]
    builders: dict[str, Builder]
    hosts: dict[str, HostSpec]
    images: dict[str, ImageSpec]
    lib_dirs: tuple[str, ...]
    deploy: dict[str, Any]
    doc: Map = field(repr=False)
    # where modules and lib folders may live: the fleet, the library, fleet.yaml's module_paths
    module_roots: tuple[str, ...] = ()


def resolve_ref(raw: Any, base_dir: str, loc: Loc) -> ModuleRef:
    """A module reference as written (``PATH`` or ``{use: PATH, with: {...}}``) made absolute."""
    if isinstance(raw, dict):
        path, args = raw["use"], raw.get("with")
    else:
        path, args = raw, None
    full = library_path(path) or os.path.join(base_dir, path)
    return ModuleRef(os.path.normpath(full), args, loc, path)


def _refs(seq: Any, base_dir: str) -> tuple[ModuleRef, ...]:
    if not isinstance(seq, Seq):
        return ()
    return tuple(resolve_ref(item, base_dir, seq.item_locs[i]) for i, item in enumerate(seq))


def load_fleet(root: str) -> FleetSpec:
    """Parse and check fleet.yaml; report every structural problem at once."""
    file = os.path.join(root, FLEET_FILE)
    doc = load_file(file)
    if not isinstance(doc, Map):
        raise fail(Loc(file, 1, 1), "fleet.yaml must be a mapping")
    problems = priority_tags(doc, "fleet.yaml") or document_problems(doc, "fleet", file)
    if problems:
        raise FleetErrors(problems)
    roots = (root, library_root(), *_module_paths(doc, root))
    channels = {k: dict(v) for k, v in doc.get("channels", {}).items()}
    if "stable" not in channels:
        channels["stable"] = {"suite": "bookworm"}
    builders = _builders(doc, root, channels, problems)
    hosts = _hosts(doc, root, builders, channels, problems)
    images = _images(doc, hosts, problems)
    lib_dirs = _lib_dirs(doc, root, roots, problems)
    if problems:
        raise FleetErrors(problems)
    return FleetSpec(
        root=root,
        file=file,
        name=doc["name"],
        channels=channels,
        defaults=_refs(doc.get("defaults"), root),
        builders=builders,
        hosts=hosts,
        images=images,
        lib_dirs=lib_dirs,
        deploy=dict(doc.get("deploy", {})),
        doc=doc,
        module_roots=roots,
    )


def _module_paths(doc: Map, root: str) -> list[str]:
    return [os.path.normpath(os.path.join(root, d)) for d in doc.get("module_paths", [])]


def _lib_dirs(
    doc: Map, root: str, roots: tuple[str, ...], problems: list[Problem]
) -> tuple[str, ...]:
    out = []
    section = doc.get("lib", Seq(doc.loc))
    for i, d in enumerate(section):
        folder = os.path.normpath(os.path.join(root, d))
        if not inside(folder, roots):
            problems.append(Problem(section.item_locs[i], outside_message(d), OUTSIDE_HINT))
        out.append(folder)
    return tuple(out)


OUTSIDE_HINT = (
    "a fleet names files in its own folder or the library (orchestrate:...); "
    "list other folders under module_paths in fleet.yaml"
)


def outside_message(written: str) -> str:
    return f"{excerpt(written)} is outside the fleet folder (or names a link out of it)"


def priority_tags(doc: Any, where: str) -> list[Problem]:
    """!default and !force are priorities of definitions: anywhere else they are a mistake
    (and a value the compiler could not write)."""
    found = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, Prio):
            found.append(
                Problem(
                    node.loc, f"!default and !force only mark definitions in `config`, not {where}"
                )
            )
            node = node.value
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _channel_ok(
    name: str | None, channels: dict[str, Any], loc: Loc | None, problems: list[Problem]
) -> None:
    if name is not None and name not in channels:
        known = ", ".join(sorted(channels))
        problems.append(Problem(loc, f"undeclared channel {name!r}", f"declared channels: {known}"))


def _builders(
    doc: Map, root: str, channels: dict[str, Any], problems: list[Problem]
) -> dict[str, Builder]:
    out = {}
    section = doc.get("builders", Map(doc.loc))
    for name, b in section.items():
        loc = loc_of(section, name) or doc.loc
        channel = b.get("channel", "stable")
        _channel_ok(channel, channels, loc_of(b, "channel"), problems)
        out[name] = Builder(name, b["arch"], channel, _refs(b.get("modules"), root), loc)
    return out


def _hosts(
    doc: Map,
    root: str,
    builders: dict[str, Builder],
    channels: dict[str, Any],
    problems: list[Problem],
) -> dict[str, HostSpec]:
    out = {}
    section = doc["hosts"]
    defaults = doc.get("deploy", {})
    for name, h in section.items():
        loc = loc_of(section, name) or doc.loc
        if name in RESERVED_HOSTS:
            problems.append(
                Problem(loc, f"{name!r} is a name Ansible keeps for itself", "rename the host")
            )
        if h["builder"] not in builders:
            known = ", ".join(sorted(builders)) or "none declared"
            problems.append(
                Problem(
                    loc_of(h, "builder"),
                    f"host {name!r}: unknown builder {h['builder']!r}",
                    f"builders: {known}",
                    (str(name),),
                )
            )
        _channel_ok(h.get("channel"), channels, loc_of(h, "channel"), problems)
        d = h.get("deploy", {})
        deploy = Deploy(
            host=d.get("host", name),
            user=d.get("user", defaults.get("user", "root")),
            port=d.get("port", defaults.get("port", 22)),
            build_on=d.get("build_on", "local"),
            confirm_timeout=d.get("confirm_timeout", defaults.get("confirm_timeout", 30)),
            keep_generations=d.get("keep_generations", defaults.get("keep_generations", 10)),
        )
        out[name] = HostSpec(
            name,
            h["builder"],
            tuple(h.get("tags", ())),
            h.get("channel"),
            _refs(h.get("modules"), root),
            deploy,
            loc,
        )
    return out


def _images(doc: Map, hosts: dict[str, HostSpec], problems: list[Problem]) -> dict[str, ImageSpec]:
    out = {}
    section = doc.get("images", Map(doc.loc))
    for name, img in section.items():
        loc = loc_of(section, name) or doc.loc
        for i, h in enumerate(img["hosts"]):
            if h not in hosts:
                problems.append(
                    Problem(img["hosts"].item_locs[i], f"image {name!r}: unknown host {h!r}")
                )
        out[name] = ImageSpec(
            name,
            tuple(img["hosts"]),
            img["format"],
            img.get("size"),
            bool(img.get("include_host_key", False)),
            loc,
        )
    return out


@dataclass(frozen=True)
class OptionDecl:
    """One declared option: its dotted path, JSON Schema and where it was declared."""

    path: tuple[str, ...]
    schema: dict[str, Any]
    loc: Loc
    broken: bool = False  # its schema was refused (and reported): values of it are unusable

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Block:
    """A group of definitions that applies when ``when`` holds (always when it is None)."""

    when: str | None
    when_loc: Loc | None
    defs: Map


@dataclass(frozen=True)
class Check:
    expr: str
    message: str
    loc: Loc


@dataclass(frozen=True)
class HealthCheck:
    """A module's health check, as written: ``spec`` holds its `command`, `http` or `tcp` and
    its `timeout` and `interval`, expressions not yet evaluated."""

    name: str
    when: str | None
    spec: dict[str, Any]
    loc: Loc


@dataclass(frozen=True)
class ModuleFile:
    """A parsed, schema-checked module file."""

    path: str
    params: dict[str, tuple[dict[str, Any], Loc]]
    imports: tuple[ModuleRef, ...]
    options: tuple[OptionDecl, ...]
    blocks: tuple[Block, ...]
    role: str | None
    role_when: str | None
    role_when_loc: Loc | None
    role_loc: Loc | None
    tasks: Seq | None
    handlers: Seq | None
    templates: dict[str, str]
    secrets: dict[str, dict[str, str]]
    renamed: dict[str, tuple[str, Loc]]
    assertions: tuple[Check, ...]
    warnings: tuple[Check, ...]
    loc: Loc
    checks: tuple[HealthCheck, ...] = ()


class ModuleCache:
    """Parses each module file once per run; collects problems instead of stopping at the first.
    Only files below ``roots`` are read (the fleet folder, the library, module_paths)."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self._inside = Inside(roots)
        self.files: dict[str, ModuleFile | None] = {}
        self.problems: list[Problem] = []
        # files read ahead without a problem (loader/preload.py), taken when first asked for
        self.preloaded: dict[str, ModuleFile] = {}

    def get(self, ref: ModuleRef) -> ModuleFile | None:
        if ref.path not in self.files:
            found = self.preloaded.pop(ref.path, None)
            self.files[ref.path] = found if found is not None else self._load(ref)
        return self.files[ref.path]

    def _load(self, ref: ModuleRef) -> ModuleFile | None:
        if not self._inside(ref.path):
            self.problems.append(Problem(ref.loc, outside_message(ref.written), OUTSIDE_HINT))
            return None
        if not os.path.exists(ref.path):
            self.problems.append(Problem(ref.loc, f"module not found: {display_path(ref.path)}"))
            return None
        try:
            doc = load_file(ref.path)
        except FleetErrors as exc:
            self.problems.extend(exc.problems)
            return None
        found = document_problems(doc, "module", ref.path)
        if found:
            self.problems.extend(found)
            return None
        doc = doc if doc is not None else Map(Loc(ref.path, 1, 1))
        outside_config = {k: v for k, v in doc.items() if k != "config"}
        found = priority_tags(outside_config, "elsewhere in a module")
        if found:
            self.problems.extend(found)
            return None
        return self._typed(ref.path, doc)

    def _typed(self, path: str, doc: Map) -> ModuleFile:
        base = os.path.dirname(path)
        params = {}
        for name, schema in doc.get("params", {}).items():
            where = loc_of(doc["params"], name) or doc.loc
            found = check_option_schema(schema, where, "parameter")
            self.problems.extend(found)
            # a refused schema (reported) accepts anything, so that nothing else trips on it
            params[name] = ({"default": None} if found else schema, where)
        for old, new in doc.get("renamed", {}).items():
            for p in (old, new):
                problem = option_path_problem(p)
                if problem:
                    self.problems.append(Problem(loc_of(doc["renamed"], old) or doc.loc, problem))
        return ModuleFile(
            path=path,
            params=params,
            imports=_refs(doc.get("imports"), base),
            options=self._options(doc),
            blocks=_blocks(doc),
            role=doc.get("role"),
            role_when=doc.get("role_when"),
            role_when_loc=loc_of(doc, "role_when"),
            role_loc=loc_of(doc, "role"),
            tasks=doc.get("tasks"),
            handlers=doc.get("handlers"),
            templates=dict(doc.get("templates", {})),
            secrets={k: dict(v) for k, v in doc.get("secrets", {}).items()},
            renamed={
                k: (v, loc_of(doc["renamed"], k) or doc.loc)
                for k, v in doc.get("renamed", {}).items()
            },
            assertions=_checks(doc.get("assertions"), "assert"),
            warnings=_checks(doc.get("warnings"), "when"),
            loc=doc.loc,
            checks=self._health_checks(doc.get("checks")),
        )

    def _health_checks(self, seq: Any) -> tuple[HealthCheck, ...]:
        out = []
        for item in seq or ():
            loc = loc_of(item, "name") or item.loc
            kinds = [k for k in ("command", "http", "tcp") if k in item]
            if len(kinds) != 1:
                said = "has " + " and ".join(kinds) if kinds else "has none"
                self.problems.append(
                    Problem(loc, f"check {item['name']!r} {said}: give one of command, http, tcp")
                )
                continue
            spec = {k: v for k, v in item.items() if k not in ("name", "when")}
            out.append(HealthCheck(item["name"], item.get("when"), spec, loc))
        return tuple(out)

    def _options(self, doc: Map) -> tuple[OptionDecl, ...]:
        section = doc.get("options")
        if not section:
            return ()
        out = []
        for key, schema in section.items():
            loc = loc_of(section, key) or doc.loc
            for decl in _flatten_decl(tuple(key.split(".")), schema, loc):
                problem = option_path_problem(decl.name)
                if problem:
                    self.problems.append(Problem(decl.loc, problem))
                    continue
                found = check_option_schema(decl.schema, decl.loc)
                self.problems.extend(found)
                out.append(
                    OptionDecl(decl.path, decl.schema, decl.loc, broken=True) if found else decl
                )
        return tuple(out)


SCHEMA_WORDS = frozenset(
    {
        "type",
        "$ref",
        "enum",
        "const",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "default",
        "description",
        "properties",
        "items",
        "additionalProperties",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "examples",
        "deprecated",
        "if",
        "$defs",
        "prefixItems",
        "required",
    }
)


def _flatten_decl(path: tuple[str, ...], schema: Any, loc: Loc) -> list[OptionDecl]:
    """``a.b: {type: ...}`` and ``a: {b: {type: ...}}`` declare the same option.

    A mapping with no JSON Schema keyword is a level of nesting, not a schema.
    """
    if isinstance(schema, Map) and schema and not SCHEMA_WORDS.intersection(schema):
        out: list[OptionDecl] = []
        for key, sub in schema.items():
            out.extend(_flatten_decl(path + tuple(key.split(".")), sub, loc_of(schema, key) or loc))
        return out
    return [OptionDecl(path, schema, loc)]


def _blocks(doc: Map) -> tuple[Block, ...]:
    cfg = doc.get("config")
    if cfg is None:
        return ()
    if isinstance(cfg, Map):
        return (Block(None, None, cfg),)
    out = []
    for item in cfg:
        out.append(Block(item.get("when"), loc_of(item, "when"), item["set"]))
    return tuple(out)


def _checks(seq: Any, key: str) -> tuple[Check, ...]:
    if not seq:
        return ()
    return tuple(Check(item[key], item["message"], loc_of(item, key) or item.loc) for item in seq)
