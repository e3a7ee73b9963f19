"""The regular expressions of JSON Schema (`pattern`, `patternProperties`), matched as ECMA-262
reads them and in bounded time.

A schema's patterns come from the fleet's own modules, so one with catastrophic backtracking
(`^(a+)+$` against forty a's and a `!`) must not hang a compile: matching runs on the `regex`
engine with a timeout. ECMA-262 semantics where Python's differ: `$` is the end of the text
(Python's also matches before a final newline, which let `"web\\n"` pass `^[a-z]+$`), and `\\d`,
`\\w`, `\\s` are ASCII classes.
"""

from __future__ import annotations

from functools import cache

import regex

TIMEOUT = 0.25  # seconds for one match; real patterns on real values take microseconds


class PatternError(ValueError):
    """A pattern that is not a valid regular expression."""


class PatternTimeout(Exception):
    """Matching took longer than TIMEOUT: the pattern backtracks catastrophically."""


@cache
def compile_pattern(source: str) -> regex.Pattern[str]:
    """``source`` compiled with ECMA-262 anchors and classes (cached); PatternError if invalid."""
    try:
        return regex.compile(_ecma_anchors(source), regex.ASCII | regex.V0)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise PatternError(str(exc)) from None


def search(source: str, text: str) -> bool:
    """Whether ``source`` matches somewhere in ``text`` (JSON Schema's `pattern` semantics)."""
    try:
        return compile_pattern(source).search(text, timeout=TIMEOUT) is not None
    except TimeoutError:
        raise PatternTimeout(source) from None


def _ecma_anchors(source: str) -> str:
    """Every unescaped ``$`` outside a character class becomes ``\\Z`` (end of text only)."""
    out: list[str] = []
    i, n, in_class = 0, len(source), False
    while i < n:
        c = source[i]
        if c == "\\" and i + 1 < n:
            out.append(source[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if source.startswith("]", i + 1) or source.startswith("^]", i + 1):
                out.append(source[i : i + (2 if source[i + 1] == "]" else 3)])
                i += 2 if source[i + 1] == "]" else 3
                continue
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)
