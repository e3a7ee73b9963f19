"""Every exit code orchestrate returns, and which one wins when several apply. The library's
results carry their code (``exit_code``), errors carry theirs (``OrchestrateError.exit_code``),
and the command line only returns them; `--help`, docs/conventions.md and README.md show this
table (a test holds them to it).

Scripts and schedulers branch on these numbers, so they follow ansible-playbook's and terraform's
where those agree: a usage mistake is 1, never 2, so that `plan --detailed-exitcode` cannot
mistake a typo for "changes found".
"""

from __future__ import annotations

OK = 0
INVALID = 1
CHANGES = 2
FAILED = 3
LOCKED = 4
INTERNAL = 70  # EX_SOFTWARE of sysexits.h
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped

MEANINGS: dict[int, str] = {
    OK: "success",
    INVALID: "invalid input or usage (a bad flag too); nothing ran, nothing was written",
    CHANGES: "plan --detailed-exitcode: changes were found",
    FAILED: "the run finished with failed or unreachable hosts",
    LOCKED: "another run holds the fleet's lock",
    INTERNAL: "internal error (one line names the debug log with the traceback)",
    INTERRUPTED: "interrupted (Ctrl-C, SIGTERM); records are kept",
}


def for_run(failed: bool, interrupted: bool = False) -> int:
    """A run of hosts (apply, a role's tests, a testbed's health): being stopped outranks what
    the hosts did, since what they did is then incomplete."""
    if interrupted:
        return INTERRUPTED
    return FAILED if failed else OK


def for_plan(failed: bool, changes: bool, detailed: bool, interrupted: bool = False) -> int:
    """A plan: as a run, and then changes count only when asked for (--detailed-exitcode), so
    that a plan in a script that does not ask still exits 0."""
    code = for_run(failed, interrupted)
    if code == OK and detailed and changes:
        return CHANGES
    return code


__all__ = [
    "CHANGES",
    "FAILED",
    "INTERNAL",
    "INTERRUPTED",
    "INVALID",
    "LOCKED",
    "MEANINGS",
    "OK",
    "for_plan",
    "for_run",
]
