"""``${...}`` templates and JMESPath expressions, with the library functions they may call.

A string that is exactly ``${expr}`` takes the expression's value with its type; ``${expr}``
inside a longer string is rendered as text; ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfun

from orchestrator.errors import Loc, Problem


@dataclass(frozen=True)
class Template:
    """A parsed string: literal text pieces and expressions, alternating."""

    parts: tuple[str | Expr, ...]

    @property
    def whole(self) -> Expr | None:
        """The expression when the string is exactly ``${expr}``."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Expr):
            return self.parts[0]
        return None


@dataclass(frozen=True)
class Expr:
    source: str
    compiled: Any
    path: tuple[str, ...] | None = None  # set when the expression is a plain field chain


def field_chain(node: dict[str, Any]) -> tuple[str, ...] | None:
    """``a.b."c-d"`` as ('a', 'b', 'c-d'); None for anything else. Such chains (most of a
    fleet's expressions) are read with .get() directly, as JMESPath's field lookup does."""
    kind = node.get("type")
    if kind == "field":
        return (node["value"],)
    if kind == "subexpression":
        out: tuple[str, ...] = ()
        for child in node["children"]:
            part = field_chain(child)
            if part is None:
                return None
            out += part
        return out
    return None


class ExprSyntaxError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_COMPILED: dict[str, Any] = {}


def compile_expr(source: str) -> Expr:
    """Compile one JMESPath expression (cached); raise ExprSyntaxError on bad syntax."""
    compiled = _COMPILED.get(source)
    if compiled is None:
        try:
            compiled = jmespath.compile(source)
        except jexc.ParseError as exc:
            where = f" at column {exc.lex_position + 1}" if exc.lex_position is not None else ""
            raise ExprSyntaxError(f"invalid expression {source!r}{where}: {exc.msg}") from None
        except jexc.JMESPathError as exc:
            raise ExprSyntaxError(f"invalid expression {source!r}: {exc}") from None
        _COMPILED[source] = compiled
    return Expr(source, compiled, field_chain(compiled.parsed))


def has_template(text: str) -> bool:
    return "${" in text


_TEMPLATES: dict[str, Template] = {}


def parse_template(text: str) -> Template:
    """Split a string into literal text and ``${...}`` expressions (cached by text)."""
    found = _TEMPLATES.get(text)
    if found is None:
        found = _TEMPLATES[text] = _parse_template(text)
    return found


def _parse_template(text: str) -> Template:
    parts: list[str | Expr] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("$${", i):
            buf.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(compile_expr(text[i + 2 : end].strip()))
            i = end + 1
        else:
            buf.append(text[i])
            i += 1
    if buf:
        parts.append("".join(buf))
    return Template(tuple(parts))


def _closing_brace(text: str, start: int) -> int:
    depth, i, quote = 0, start, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ExprSyntaxError(f"unclosed ${{ in {text!r}")


def to_text(value: Any) -> str:
    """How a value reads inside a longer string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(plain(value), sort_keys=True)


def plain(value: Any) -> Any:
    """Force lazy views into ordinary dicts and lists (for output and for functions)."""
    force = getattr(value, "materialize", None)
    if force is not None:
        return force()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def truthy(value: Any) -> bool:
    """JMESPath truth: false, null, empty string, list and object are false."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    if hasattr(value, "materialize"):
        return True  # a lazy view always has declared options below it
    return True


# ---------------------------------------------------------------- library functions


def wg_peers(hosts: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """WireGuard peers of ``name``: each other host whose ``vpn.enable`` is true (seed's lib)."""
    peers = []
    for other in sorted(hosts):
        if other == name:
            continue
        h = hosts[other]
        vpn = _get_path(h.get("config"), ("vpn",))
        if not vpn or not vpn.get("enable"):
            continue
        peers.append(
            {
                "name": other,
                "public_key": vpn.get("public_key"),
                "endpoint": f"{h['deploy']['host']}:{vpn.get('listen_port')}",
                "allowed_ips": [f"{vpn.get('address')}/32"],
            }
        )
    return peers


_EXPORTERS = ("services", "prometheus", "exporters")


def scrape_targets(hosts: dict[str, Any], kind: str) -> list[str]:
    """``address:port`` of every host that enables exporter ``kind``, by host name; an exporter
    listening on 0.0.0.0 is scraped at its host's deploy address."""
    targets = []
    for name in sorted(hosts):
        h = hosts[name]
        found = _get_path(h.get("config"), (*_EXPORTERS, kind))
        if found and found.get("enable"):
            address = found.get("listen_address")
            if address in (None, "0.0.0.0"):
                address = h["deploy"]["host"]
            targets.append(f"{address}:{found.get('port')}")
    return targets


def scrape_jobs(hosts: dict[str, Any]) -> list[dict[str, Any]]:
    """One scrape job per exporter kind that some host enables, named after the kind."""
    kinds: set[str] = set()
    for h in hosts.values():
        group = _get_path(h.get("config"), _EXPORTERS)
        if group:
            kinds.update(group.keys())
    jobs = [{"job_name": k, "targets": scrape_targets(hosts, k)} for k in sorted(kinds)]
    return [j for j in jobs if j["targets"]]


def _get_path(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value


def secret_path(name: str) -> str:
    """``secret('db/password')``: where the decrypted secret will be on the target."""
    return f"/run/orchestrate/secrets/{name}"


BUILTINS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "wg_peers": (wg_peers, ("object", "string")),
    "scrape_jobs": (scrape_jobs, ("object",)),
    "scrape_targets": (scrape_targets, ("object", "string")),
    "secret": (secret_path, ("string",)),
}


def jmespath_function(*types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a fleet's ``lib/*.py``: declares a JMESPath function and its argument types.

    Types are JMESPath's: ``string``, ``number``, ``boolean``, ``array``, ``object``, ``null``,
    ``any``. The function receives plain Python values.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__dict__["jmespath_types"] = tuple(types)
        return fn

    return mark


def load_lib_functions(
    dirs: tuple[str, ...], fleet_file: str
) -> tuple[dict[str, tuple[Callable[..., Any], tuple[str, ...]]], list[Problem]]:
    """Functions a fleet declares in its ``lib`` folders, by name."""
    found: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}
    problems: list[Problem] = []
    for folder in dirs:
        if not os.path.isdir(folder):
            problems.append(Problem(Loc(fleet_file, 1, 1), f"lib folder not found: {folder}"))
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                _load_lib(os.path.join(folder, name), found, problems)
    return found, problems


def _load_lib(path: str, found: dict[str, Any], problems: list[Problem]) -> None:
    spec = importlib.util.spec_from_file_location(f"orchestrate_lib_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: report, don't crash
        problems.append(Problem(Loc(path, 1, 1), f"cannot load library: {exc!r}"))
        return
    for fname, fn in inspect.getmembers(module, callable):
        types = getattr(fn, "jmespath_types", None)
        if types is None:
            continue
        if fname in found or fname in BUILTINS:
            problems.append(Problem(Loc(path, 1, 1), f"library function {fname!r} defined twice"))
            continue
        found[fname] = (fn, types)


def make_functions(extra: dict[str, tuple[Callable[..., Any], tuple[str, ...]]]) -> jfun.Functions:
    """A JMESPath function table with the built-ins, the fleet's own functions, and lazy views."""
    attrs: dict[str, Any] = {"call_function": _call_function}
    for name, (fn, types) in {**BUILTINS, **extra}.items():
        attrs[f"_func_{name}"] = _wrap(fn, types)
    cls = type("FleetFunctions", (jfun.Functions,), attrs)
    instance: jfun.Functions = cls()
    return instance


def _wrap(fn: Callable[..., Any], types: tuple[str, ...]) -> Callable[..., Any]:
    def method(self: Any, *args: Any) -> Any:
        return fn(*args)

    method.signature = tuple({"types": [t] if t != "any" else []} for t in types)  # type: ignore[attr-defined]
    return method


def _call_function(self: jfun.Functions, function_name: str, resolved_args: list[Any]) -> Any:
    # A lazy config view passed whole becomes a plain value before JMESPath checks its type;
    # views nested deeper stay lazy (functions read them with .get), so that passing `hosts`
    # does not force every host's configuration.
    args = [_argument(a) for a in resolved_args]
    return jfun.Functions.call_function(self, function_name, args)


def _argument(value: Any) -> Any:
    if hasattr(value, "materialize"):
        return plain(value)
    as_dict = getattr(value, "as_dict", None)  # `hosts`: a plain dict of the same entries
    return as_dict() if as_dict is not None else value
