"""Host selection (`--limit`, `image build --limit`, `testbed up --hosts`), in the grammar
Ansible and colmena users know.

    SEL   := TERM ([,:] TERM)*
    TERM  := ["!" | "&"] BODY          ! excludes, & intersects; the rest are a union
    BODY  := HOST | GLOB | GROUP | "@" GROUP | "arch:" ARCH

A plain name is a host, else a group (`arch_x86_64`, `tag_core`, `role_nginx`), else a tag
(`core` is `tag_core`); `@name` is a group or a tag; a glob (`pi-*`, `LINDA?`) matches host
names. Only exclusions (`!pi-*`) select every other host. A name that matches nothing, or a
selection of no host at all, is an error with a "did you mean" (names compared case-blind).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any

from orchestrator.errors import UsageError, quoted
from orchestrator.naming import ARCHES, group_text

_GLOB = re.compile(r"[*?\[]")


def select(data: dict[str, Any], limit: str | None) -> list[str]:
    """The hosts of ``data`` ({hosts, groups}, as the build's fleet.json) that ``limit``
    names, sorted; every host when ``limit`` is empty."""
    hosts = sorted(data["hosts"])
    if not limit or not limit.strip():
        return hosts
    union: set[str] = set()
    narrow: list[set[str]] = []
    drop: set[str] = set()
    positive = False
    for term in _terms(limit):
        op, body = (term[0], term[1:]) if term[0] in "!&" else ("", term)
        if not body:
            raise UsageError(f"--limit: {quoted(term)} names nothing")
        found = _matches(data, body)
        if op == "!":
            drop |= found
        elif op == "&":
            narrow.append(found)
        else:
            positive = True
            union |= found
    chosen = union if positive else set(hosts)
    for group in narrow:
        chosen &= group
    chosen -= drop
    if not chosen:
        raise UsageError(f"--limit {quoted(limit, 80)} selects no host")
    return [h for h in hosts if h in chosen]


def _terms(limit: str) -> list[str]:
    """Split on commas and colons, keeping `arch:X` whole (with any ! or & before it)."""
    parts = [p.strip() for p in re.split(r"[,:]", limit)]
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if part.lstrip("!&") == "arch" and i + 1 < len(parts):
            part, i = f"{part}:{parts[i + 1]}", i + 1
        if part:
            out.append(part)
        i += 1
    return out


def _matches(data: dict[str, Any], body: str) -> set[str]:
    hosts: dict[str, Any] = data["hosts"]
    groups: dict[str, list[str]] = data["groups"]
    if body.startswith("arch:"):
        arch = f"arch_{body[5:]}"
        if arch not in groups:
            raise UsageError(
                f"--limit: unknown architecture {quoted(body[5:])} ({', '.join(ARCHES)})"
            )
        return set(groups[arch])
    if body.startswith("@"):
        named = _group(groups, body[1:])
        if named is None:
            raise _unknown(body, [f"@{g}" for g in _group_names(groups)])
        return set(groups[named])
    if body in hosts:
        return {body}
    if _GLOB.search(body):
        found = {h for h in hosts if fnmatch.fnmatchcase(h, body)}
        if not found:
            raise UsageError(f"--limit: {quoted(body)} matches no host name")
        return found
    group = _group(groups, body)
    if group is not None:
        return set(groups[group])
    raise _unknown(body, [*hosts, *_group_names(groups)])


def _group(groups: dict[str, list[str]], name: str) -> str | None:
    """A group by its name as orchestrate writes it (`tag_rack-1` is `tag_rack_1`), or a tag
    by its plain name."""
    written = group_text(name)
    for candidate in (written, f"tag_{written}"):
        if candidate in groups:
            return candidate
    return None


def _group_names(groups: dict[str, list[str]]) -> list[str]:
    plain = [g[4:] for g in groups if g.startswith("tag_")]
    return [*groups, *plain]


def _unknown(body: str, known: list[str]) -> UsageError:
    lowered = {k.lower(): k for k in known}
    close = lowered.get(body.lower()) or next(
        iter(difflib.get_close_matches(body.lower(), list(lowered), n=1)), None
    )
    hint = f" (did you mean {quoted(lowered.get(close, close))}?)" if close else ""
    return UsageError(f"--limit: no host or group named {quoted(body)}{hint}")
