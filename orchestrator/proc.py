"""The one way orchestrate runs a command and waits for it: its output captured, and a command
that fails turned into the tool's error, worded by the caller (each tool says its failures its
own way: sops on stderr, a mount in one line, pip at length). Standard library only."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

Text = subprocess.CompletedProcess[str]
Bytes = subprocess.CompletedProcess[bytes]


def run(
    cmd: Sequence[str],
    fail: Callable[[Text], Exception] | None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input: str | None = None,
) -> Text:
    """Run ``cmd`` with text output; ``fail(result)`` is raised when it exits non-zero. With
    ``fail`` None the exit status is the caller's answer (a probe: is it there, does it run)."""
    done = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        input=input,
        check=False,
    )
    if fail is not None and done.returncode != 0:
        raise fail(done)
    return done


def run_bytes(
    cmd: Sequence[str],
    fail: Callable[[Bytes], Exception],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Bytes:
    """:func:`run` for output that is data, not text (ciphertext, a file's bytes)."""
    done = subprocess.run(list(cmd), input=input, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise fail(done)
    return done
