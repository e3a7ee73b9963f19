"""orchestrator.proc: a command's output, or its failure as the error the caller words."""

from __future__ import annotations

import pytest

from orchestrator import proc
from orchestrator.errors import OrchestrateError


def _refused(done: proc.Text) -> OrchestrateError:
    return OrchestrateError(f"exit {done.returncode}: {done.stderr.strip()}")


def test_a_command_that_succeeds_gives_its_output() -> None:
    assert proc.run(["sh", "-c", "echo out; echo err >&2"], _refused).stdout == "out\n"


def test_a_command_that_fails_raises_the_callers_error_with_its_stderr() -> None:
    with pytest.raises(OrchestrateError, match=r"^exit 3: no such thing$"):
        proc.run(["sh", "-c", "echo no such thing >&2; exit 3"], _refused)


def test_bytes_in_and_out() -> None:
    done = proc.run_bytes(["cat"], lambda d: OrchestrateError("cat failed"), input=b"\x00\xff")
    assert done.stdout == b"\x00\xff"
    with pytest.raises(OrchestrateError, match="cat failed"):
        proc.run_bytes(["cat", "/nonexistent"], lambda d: OrchestrateError("cat failed"))
