"""Where orchestrate's own files are: the module library and the shipped roles (no imports
beyond the standard library, so that fast commands stay fast)."""

from __future__ import annotations

import os

from orchestrator.errors import UsageError
from orchestrator.naming import STATE_DIR

FLEET_FILE = "fleet.yaml"
# `orchestrate:NAME` names what ships with the tool: a library module
# (`orchestrate:services/prometheus.yaml`) or a shared type (`orchestrate:port`); manifests name
# the shipped roles' files `orchestrate-roles:PATH`
SHIPPED_PREFIX = "orchestrate:"
ROLES_PREFIX = "orchestrate-roles:"
_HERE = os.path.dirname(os.path.abspath(__file__))


def state_dir(root: str) -> str:
    """The folder of a fleet's builds, run records and host state."""
    return os.path.join(root, STATE_DIR)


def library_root() -> str:
    """Where modules named ``orchestrate:PATH`` live (the module library shipped with the tool)."""
    return os.path.join(_HERE, "library")


def library_functions_dir() -> str:
    """The shipped library's JMESPath functions (wg_peers, scrape_*): a lib/ folder like a
    fleet's own, loaded for every fleet."""
    return os.path.join(library_root(), "lib")


def orchestrate_name(ref: object) -> str | None:
    """NAME of an ``orchestrate:NAME`` reference; None for anything else."""
    if isinstance(ref, str) and ref.startswith(SHIPPED_PREFIX):
        return ref[len(SHIPPED_PREFIX) :]
    return None


def orchestrate_ref(name: str) -> str:
    """``orchestrate:NAME``: how a file or type is named by users (the inverse of
    :func:`orchestrate_name`)."""
    return SHIPPED_PREFIX + name


def library_path(ref: str) -> str | None:
    """The file of a library module reference ``orchestrate:PATH``; None for any other path."""
    name = orchestrate_name(ref)
    return None if name is None else os.path.join(library_root(), name)


def _shipped() -> tuple[tuple[str, str], ...]:
    return ((SHIPPED_PREFIX, library_root()), (ROLES_PREFIX, shipped_roles_dir()))


def shipped_name(path: str, roles: bool = True) -> str | None:
    """``orchestrate:PATH`` for a file of the library (``orchestrate-roles:PATH`` for one of the
    shipped roles, unless ``roles`` is false); None for a file that does not ship with the tool."""
    for prefix, folder in _shipped() if roles else _shipped()[:1]:
        if path.startswith(folder + os.sep):
            return prefix + os.path.relpath(path, folder)
    return None


def shipped_path(name: str) -> str | None:
    """The file behind a name :func:`shipped_name` gives; None for any other name."""
    for prefix, folder in _shipped():
        if name.startswith(prefix):
            return os.path.join(folder, name[len(prefix) :])
    return None


def shipped_roles_dir() -> str:
    """The roles that come with orchestrate: package data (roles/ in a checkout links here), so
    that an installed wheel has them as a checkout does."""
    return os.path.join(_HERE, "roles")


def shipped_playbooks_dir() -> str:
    """The playbooks that come with orchestrate (package data, like the roles)."""
    return os.path.join(_HERE, "playbooks")


def find_fleet(explicit: str | None, env: dict[str, str], cwd: str) -> str:
    """--fleet DIR, else $ORCHESTRATE_FLEET, else the nearest folder above cwd with fleet.yaml."""
    chosen = explicit or env.get("ORCHESTRATE_FLEET")
    if chosen:
        root = os.path.abspath(chosen)
        if not os.path.isfile(os.path.join(root, FLEET_FILE)):
            raise UsageError(f"no {FLEET_FILE} in {root}")
        return root
    here = os.path.abspath(cwd)
    while True:
        if os.path.isfile(os.path.join(here, FLEET_FILE)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            raise UsageError(
                f"no {FLEET_FILE} in {cwd} or above; pass --fleet DIR or set ORCHESTRATE_FLEET"
            )
        here = parent


def checkout_commit() -> str | None:
    """The commit of the git checkout the package runs from (an editable install); None for
    an installed wheel, or where git cannot say."""
    import subprocess

    top = os.path.dirname(_HERE)
    if not os.path.exists(os.path.join(top, ".git")):
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", top, "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
