"""``${...}`` templates and JMESPath expressions, with the library functions they may call.

A string that is exactly ``${expr}`` takes the expression's value with its type; ``${expr}``
inside a longer string is rendered as text; ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import inspect
import json
import os
import types as pytypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfun

from orchestrator.errors import Loc, Problem, excerpt, quoted
from orchestrator.evaluator.closures import closure
from orchestrator.fsutil import read_regular
from orchestrator.loader.files import inside
from orchestrator.naming import SECRET_NAME

MAX_VALUE_DEPTH = 100  # nesting of a value an expression computes (YAML's own limit is 64)
INT_RANGE = (-(2**63), 2**64 - 1)


class EvalSignal(Exception):
    """Base of the evaluator's own signals (a cycle, an unusable value, a failed expression):
    they pass through library functions untouched, whatever those catch."""


class ExprFailure(EvalSignal):
    """An expression could not be evaluated; carries the user-facing message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


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
    # otherwise, when closures.py handles every node of it: (value, functions) -> result
    closure: Any = None


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
        except RecursionError:
            raise ExprSyntaxError(
                f"expression {quoted(source)} is nested too deeply to evaluate"
            ) from None
        except jexc.ParseError as exc:
            where = f" at column {exc.lex_position + 1}" if exc.lex_position is not None else ""
            raise ExprSyntaxError(
                f"invalid expression {quoted(source, 80)}{where}: {exc.msg}"
            ) from None
        except jexc.JMESPathError as exc:
            raise ExprSyntaxError(f"invalid expression {quoted(source, 80)}: {exc}") from None
        _COMPILED[source] = compiled
    path = field_chain(compiled.parsed)
    return Expr(source, compiled, path, closure(compiled.parsed) if path is None else None)


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
    raise ExprSyntaxError(f"unclosed ${{ in {quoted(text, 80)}")


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
# Functions that read `hosts` (the shipped library's in orchestrator/library/lib/, and a
# fleet's own) receive its entries with each `config` still lazy; these read them with the
# messages a wrong argument deserves.


def host_entry(hosts: dict[str, Any], name: str, fn: str) -> Any:
    """One entry of `hosts` as a function expects it: a mapping with config and deploy."""
    h = hosts[name]
    if not hasattr(h, "get"):
        raise ExprFailure(
            f"{fn}(): host {excerpt(name)} is {kind_name(h)}, not a host",
            "pass `hosts` itself",
        )
    return h


def deploy_host(h: Any, name: str, fn: str) -> Any:
    """The deploy address of a `hosts` entry."""
    deploy = h.get("deploy")
    if not hasattr(deploy, "get"):
        raise ExprFailure(f"{fn}(): host {excerpt(name)} has no deploy address", "pass `hosts`")
    return deploy.get("host")


def config_at(value: Any, path: tuple[str, ...], fn: str) -> Any:
    """The value at ``path`` below a host's config (None where a group is unset)."""
    for i, key in enumerate(path):
        if value is None:
            return None
        if not hasattr(value, "get"):
            where = ".".join(path[:i]) or "config"
            raise ExprFailure(f"{fn}(): {where} is {kind_name(value)}, not a group of options")
        value = value.get(key)
    return value


def kind_name(value: Any) -> str:
    """What a value is, in words for a message: "a number", "an array", "null"."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array"}  # fmt: skip
    return names.get(type(value), "null" if value is None else f"a {type(value).__name__}")


def secret_path(name: str) -> str:
    """``secret('db/password')``: where the decrypted secret will be on the target."""
    if not SECRET_NAME.fullmatch(name):
        raise ExprFailure(
            f"secret({excerpt(name)}): not a secret name",
            "FILE/KEY[/KEY...]: letters, digits, _, . and -, no empty, . or .. segments, "
            "no leading /",
        )
    return f"/run/orchestrate/secrets/{name}"


def checked_json(value: Any) -> Any:
    """``value`` when it is JSON data that Ansible and the build can carry: string keys, 64-bit
    integers, finite numbers, bounded nesting. Expressions and library functions can make
    anything (JMESPath reads `1e400` as infinity); none of that may reach the build."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str) or node is None or isinstance(node, bool):
            continue
        if isinstance(node, int):
            if not INT_RANGE[0] <= node <= INT_RANGE[1]:
                raise ExprFailure(f"the value holds an integer beyond 64 bits ({excerpt(node)})")
        elif isinstance(node, float):
            if node != node or node in (float("inf"), float("-inf")):
                raise ExprFailure(f"the value holds {node}, which JSON cannot carry")
        elif isinstance(node, list | dict):
            if depth >= MAX_VALUE_DEPTH:
                raise ExprFailure(f"the value is nested deeper than {MAX_VALUE_DEPTH} levels")
            if isinstance(node, dict):
                bad = next((k for k in node if not isinstance(k, str)), None)
                if bad is not None:
                    raise ExprFailure(f"the value has a key that is not a string ({excerpt(bad)})")
                stack.extend((v, depth + 1) for v in node.values())
            else:
                stack.extend((v, depth + 1) for v in node)
        else:
            raise ExprFailure(
                f"the value holds {kind_name(node)}, which is not JSON data",
                "library functions return dicts, lists, strings, numbers, booleans or null",
            )
    return value


# the language's own; the shipped library's functions are loaded like a fleet's (lib/*.py)
BUILTINS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
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
    """Functions a fleet declares in its ``lib`` folders, by name. These files are code, run
    on this machine: only regular files inside their folder are loaded."""
    found: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}
    problems: list[Problem] = []
    for folder in dirs:
        if not os.path.isdir(folder):
            problems.append(
                Problem(Loc(fleet_file, 1, 1), f"lib folder not found: {excerpt(folder, 120)}")
            )
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not name.endswith(".py"):
                continue
            if not inside(path, (folder,)):
                problems.append(Problem(Loc(path, 1, 1), "links out of its lib folder: not loaded"))
                continue
            _load_lib(path, found, problems)
    return found, problems


def _load_lib(path: str, found: dict[str, Any], problems: list[Problem]) -> None:
    module = pytypes.ModuleType(f"orchestrate_lib_{abs(hash(path))}")
    module.__file__ = path
    try:
        source, _stat = read_regular(path)
        exec(compile(source, path, "exec"), module.__dict__)
    except (Exception, SystemExit) as exc:  # a user's file: report, don't crash
        line = getattr(exc, "lineno", None) or 1
        what = f"{type(exc).__name__}: {excerpt(str(exc), 80)[1:-1]}"
        problems.append(Problem(Loc(path, line, 1), f"cannot load library: {what}"))
        return
    for fname, fn in inspect.getmembers(module, callable):
        declared = getattr(fn, "jmespath_types", None)
        if declared is None:
            continue
        if fname in found or fname in BUILTINS:
            problems.append(Problem(Loc(path, 1, 1), f"library function {fname!r} defined twice"))
            continue
        found[fname] = (fn, declared)


def make_functions(extra: dict[str, tuple[Callable[..., Any], tuple[str, ...]]]) -> jfun.Functions:
    """A JMESPath function table with the built-ins, the fleet's own functions, and lazy views."""
    attrs: dict[str, Any] = {"call_function": _call_function}
    for name, (fn, types) in {**BUILTINS, **extra}.items():
        attrs[f"_func_{name}"] = _wrap(fn, types)
    cls = type("FleetFunctions", (jfun.Functions,), attrs)
    instance: jfun.Functions = cls()
    return instance


def _wrap(fn: Callable[..., Any], types: tuple[str, ...]) -> Callable[..., Any]:
    name = getattr(fn, "__name__", "function")

    def method(self: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (EvalSignal, RecursionError):
            raise
        except Exception as exc:  # a function's own failure is the expression's, located
            raise ExprFailure(
                f"{name}() failed: {type(exc).__name__}: {excerpt(str(exc), 80)[1:-1]}"
            ) from None

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
