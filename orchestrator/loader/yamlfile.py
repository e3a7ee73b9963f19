"""YAML with a position for every value: the first stage of the pipeline.

The document is built from parser events (libyaml when present), not from PyYAML's recursive
composer, so nesting depth and alias expansion are checked while reading: a 10,000-deep document
or an alias bomb is rejected in milliseconds with bounded memory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.digest import remember_digest
from orchestrator.errors import FleetErrors, Loc, Problem, excerpt, fail, quoted
from orchestrator.fsutil import MAX_FILE_BYTES, UnreadableFile, read_regular
from orchestrator.naming import PRIORITY_TAGS

MAX_DEPTH = 64
MAX_NODES = 2_000_000
# numbers must survive JSON and Ansible: 64-bit integers, finite floats
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml is in every supported install
    _Loader = yaml.SafeLoader
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_STR, _NULL, _BOOL, _INT, _TIMESTAMP = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "null", "bool", "int", "timestamp")
)
_REFUSED = {
    "tag:yaml.org,2002:binary": "binary values (!!binary)",
    "tag:yaml.org,2002:set": "sets (!!set)",
    "tag:yaml.org,2002:omap": "ordered maps (!!omap)",
    "tag:yaml.org,2002:pairs": "pairs (!!pairs)",
    "tag:yaml.org,2002:merge": "merge keys (<<)",
    "tag:yaml.org,2002:value": "value keys (=)",
}


class Map(dict[str, Any]):
    """A mapping that remembers where it and each of its keys were written."""

    __slots__ = ("key_locs", "loc")

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.key_locs: dict[str, Loc] = {}


class Seq(list[Any]):
    """A sequence that remembers where it and each of its items were written."""

    __slots__ = ("item_locs", "loc")

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.item_locs: list[Loc] = []


@dataclass(frozen=True)
class Prio:
    """A value written with ``!default`` or ``!force``: a definition at another priority."""

    value: Any
    priority: int
    loc: Loc


def loc_of(container: Any, key: Any) -> Loc | None:
    """The position of ``container[key]`` when the container is located."""
    if isinstance(container, Map):
        return container.key_locs.get(key, container.loc)
    if isinstance(container, Seq) and isinstance(key, int) and 0 <= key < len(container.item_locs):
        return container.item_locs[key]
    return getattr(container, "loc", None)


def locate(root: Any, path: list[Any] | tuple[Any, ...], fallback: Loc | None = None) -> Loc | None:
    """The position of the deepest located value on ``path`` below ``root``."""
    best = getattr(root, "loc", fallback)
    node = root
    for key in path:
        if isinstance(node, Prio):
            node = node.value
        loc = loc_of(node, key)
        if loc is not None:
            best = loc
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return best


def load_file(path: str, limit: int = MAX_FILE_BYTES) -> Any:
    """Read and parse one YAML file, or raise :class:`FleetErrors` pointing at the problem.
    Only regular files of at most ``limit`` bytes are read (a FIFO or /dev/zero is refused at
    once)."""
    try:
        data, stat = read_regular(path, limit)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise fail(Loc(path, 1, 1), "file not found") from None
    except UnreadableFile as exc:
        raise fail(Loc(path, 1, 1), f"cannot read file: {exc}") from None
    except OSError as exc:
        raise fail(Loc(path, 1, 1), f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail(Loc(path, 1, 1), f"not UTF-8 text (byte {exc.start})") from None
    remember_digest(path, stat, hashlib.sha256(data).hexdigest())
    return load_text(text, path)


def load_text(text: str, path: str) -> Any:
    """Parse YAML text into located values; an empty document is ``None``."""
    try:
        return _Builder(path).build(_events(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark is not None else Loc(path, 1, 1)
        msg = f"invalid YAML: {exc.problem or exc.context}"
        raise fail(loc, msg) from None
    except yaml.YAMLError as exc:
        raise fail(Loc(path, 1, 1), f"invalid YAML: {exc}") from None


def _events(text: str) -> Iterator[Any]:
    """The parser's events (what ``yaml.parse`` yields, without its per-event checks)."""
    loader = _Loader(text)
    try:
        get = loader.get_event
        while True:
            event = get()
            yield event
            if type(event) is yaml.StreamEndEvent:
                return
    finally:
        loader.dispose()


class _Frame:
    __slots__ = ("container", "key", "key_loc", "size")

    def __init__(self, container: Map | Seq | Prio | None) -> None:
        self.container = container
        self.key: Any = _NO_KEY
        self.key_loc: Loc | None = None
        self.size = 1


_NO_KEY = object()


class _Builder:
    """Builds located values from a stream of parser events, iteratively."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.total = 0
        self.stack: list[_Frame] = []
        self.tags: list[tuple[str | None, str | None]] = []  # (priority tag, anchor) per frame

    def loc(self, event: yaml.Event) -> Loc:
        mark = event.start_mark
        return Loc(self.path, mark.line + 1, mark.column + 1) if mark else Loc(self.path, 1, 1)

    def build(self, events: Iterator[Any]) -> Any:
        result: Any = None
        documents = 0
        for event in events:
            kind = type(event)  # the parser makes exactly these classes: no isinstance chain
            if kind is yaml.ScalarEvent:
                value = self.key(event) if self.wants_key() else self.scalar(event)
                self.add(value, self.loc(event), 1, event.anchor, event.tag)
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise fail(self.loc(event), "only one YAML document per file is allowed")
            elif kind is yaml.AliasEvent:
                self.alias(event)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                self.open(event)
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                frame = self.stack.pop()
                prio_tag, anchor = self.tags.pop()
                value = frame.container
                assert value is not None
                self.add(value, value.loc, frame.size, anchor, prio_tag)
            elif kind is yaml.DocumentEndEvent:
                result = self.result
        return result

    result: Any = None

    def open(self, event: yaml.CollectionStartEvent) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise fail(self.loc(event), f"nesting deeper than {MAX_DEPTH} levels")
        loc = self.loc(event)
        container: Map | Seq = Map(loc) if isinstance(event, yaml.MappingStartEvent) else Seq(loc)
        self.check_tag(event.tag, loc, isinstance(container, Map))
        self.stack.append(_Frame(container))
        self.tags.append((event.tag, event.anchor))

    def check_tag(self, tag: str | None, loc: Loc, is_map: bool) -> None:
        if tag is None or tag in PRIORITY_TAGS:
            return
        if tag in _REFUSED:
            raise fail(loc, f"{_REFUSED[tag]} are not fleet data", "write a mapping or a list")
        if tag in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq") or tag == "!":
            return
        raise fail(
            loc, f"unknown YAML tag {quoted(tag)}", "only !default and !force are understood"
        )

    def wants_key(self) -> bool:
        top = self.stack[-1] if self.stack else None
        return top is not None and isinstance(top.container, Map) and top.key is _NO_KEY

    def key(self, event: yaml.ScalarEvent) -> str:
        """A mapping key is the text as written: `true:`, `null:` and `0x1F:` are the keys
        "true", "null" and "0x1F" (never True, None or 31, which would lose the name)."""
        if event.tag not in (None, "!", _STR):
            raise fail(self.loc(event), f"a mapping key cannot carry the tag {event.tag}")
        if not event.value and not event.style:
            raise fail(self.loc(event), "empty mapping key", 'quote it if you mean ""')
        return str(event.value)

    def scalar(self, event: yaml.ScalarEvent) -> Any:
        tag, value = event.tag, event.value
        known = tag is None or tag in PRIORITY_TAGS or tag == "!" or tag.startswith("tag:yaml.org")
        if not known:
            raise fail(
                self.loc(event), f"unknown YAML tag {quoted(tag)}", _tag_hint(tag or "", value)
            )
        if tag in PRIORITY_TAGS or tag is None or tag == "!":
            if event.style:  # quoted: always a string
                return value
            tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        # the common cases directly; the rest (octal, sexagesimal, floats, ...) as PyYAML does
        if tag in (_STR, _TIMESTAMP):  # dates stay strings, as in JSON
            return value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if value.lower() not in _CONSTRUCTOR.bool_values:
                raise fail(self.loc(event), f"{excerpt(value)} is not a boolean")
            return _CONSTRUCTOR.bool_values[value.lower()]
        if tag in _REFUSED:
            raise fail(self.loc(event), f"{_REFUSED[tag]} are not fleet data", "write a string")
        if tag == _INT and value.isdigit() and (value == "0" or value[0] != "0"):
            # more than 20 digits is beyond 64 bits: never parse thousands of them
            return self.number(int(value) if len(value) <= 20 else INT_MAX + 1, event)
        node = yaml.ScalarNode(tag, value, None, None, event.style)
        try:
            result = _CONSTRUCTOR.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise fail(self.loc(event), f"invalid YAML value: {exc.problem}") from None
        except (ValueError, KeyError, TypeError, OverflowError):
            what = tag.rsplit(":", 1)[-1]
            raise fail(self.loc(event), f"{excerpt(value)} is not a valid {what}") from None
        return self.number(result, event) if isinstance(result, int | float) else result

    def number(self, value: Any, event: yaml.ScalarEvent) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(
                self.loc(event),
                f"{excerpt(event.value)} is not a JSON number (infinity and NaN have no JSON form)",
                "quote it to mean the text",
            )
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (INT_MIN <= value <= INT_MAX)
        ):
            raise fail(
                self.loc(event),
                f"integer {excerpt(event.value)} does not fit in 64 bits",
                "quote it to mean the text",
            )
        return value

    def alias(self, event: yaml.AliasEvent) -> None:
        anchor = event.anchor
        if anchor not in self.anchors:
            raise fail(self.loc(event), f"unknown alias *{anchor}")
        value, size = self.anchors[anchor]
        self.add(value, self.loc(event), size, None, None)

    def add(self, value: Any, loc: Loc, size: int, anchor: str | None, tag: str | None) -> None:
        self.total += size
        if self.total > MAX_NODES:
            raise fail(loc, f"document expands to more than {MAX_NODES:,} values (alias bomb?)")
        if tag in PRIORITY_TAGS:
            value = Prio(value, PRIORITY_TAGS[tag], loc)
        if anchor is not None:
            self.anchors[anchor] = (value, size)
        if not self.stack:
            self.result = value
            return
        frame = self.stack[-1]
        frame.size += size
        container = frame.container
        if isinstance(container, Seq):
            container.append(value)
            container.item_locs.append(loc)
        elif isinstance(container, Map):
            self.add_to_map(frame, container, value, loc)

    def add_to_map(self, frame: _Frame, container: Map, value: Any, loc: Loc) -> None:
        if frame.key is _NO_KEY:
            if not isinstance(value, str):  # an alias, or a collection, used as a key
                raise fail(loc, "mapping keys must be plain scalars")
            key = value
            if key in container:
                first = container.key_locs[key]
                raise FleetErrors(
                    [Problem(loc, f"duplicate key {key!r} (first written at {first})")]
                )
            frame.key, frame.key_loc = key, loc
            return
        assert frame.key_loc is not None
        container[frame.key] = value
        container.key_locs[frame.key] = frame.key_loc
        frame.key, frame.key_loc = _NO_KEY, None


def _tag_hint(tag: str, value: str) -> str:
    """An unquoted `when: !config.x` is a YAML tag, not a negation: say how to write it."""
    known = "only !default and !force are understood"
    if tag.startswith("!") and not tag.startswith("!!") and len(tag) > 1:
        text = tag + (f" {value}" if value else "")
        return (
            "a value that starts with ! is a YAML tag (orchestrate knows only !default and "
            f"!force); to write the expression, quote it: {excerpt(text, 60)}"
        )
    return known
