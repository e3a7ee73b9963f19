"""How Ansible drives a run's hosts: Mitogen for Ansible (one Python interpreter per host for
the whole run, module code imported once) or Ansible's own linear strategy. Mitogen is the
default; `deploy.strategy: ansible` in fleet.yaml or `--strategy ansible` falls back.

Mitogen is loaded from its installed package (a pinned dependency); nothing of it is copied
into the build. Runs that Mitogen cannot carry use Ansible's own strategy whatever the fleet
says: an image's roles enter a chroot (here through community.general.chroot, on a build host
through a login shell that Mitogen's SSH transport would bypass)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from orchestrator.errors import UsageError

MITOGEN = "mitogen"
ANSIBLE = "ansible"
STRATEGIES = (MITOGEN, ANSIBLE)
DEFAULT = MITOGEN
# the play strategies each choice runs; both process a task on every host before the next
PLAY_STRATEGY = {MITOGEN: "mitogen_linear", ANSIBLE: "linear"}


def checked(name: str, where: str) -> str:
    if name not in STRATEGIES:
        raise UsageError(f"{where} {name!r}: choose {' or '.join(STRATEGIES)}")
    return name


def plugin_dir() -> str:
    """The folder of Mitogen's strategy plugins in the installed ansible_mitogen package."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "Mitogen for Ansible is not installed (pip install mitogen, as pyproject pins it); "
            "or run on Ansible's own strategy: --strategy ansible"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "plugins", "strategy")


def envvars(name: str) -> dict[str, str]:
    """What a run's environment says so that its plays use ``name`` (the build's ansible.cfg
    names no strategy): set for every run, Ansible's own included."""
    if name == MITOGEN:
        return {"ANSIBLE_STRATEGY_PLUGINS": plugin_dir(), "ANSIBLE_STRATEGY": PLAY_STRATEGY[name]}
    return {"ANSIBLE_STRATEGY": PLAY_STRATEGY[name]}


def fleet_default(deploy: Mapping[str, Any]) -> str:
    """The strategy fleet.yaml's `deploy:` block names (the schema checked it), else Mitogen."""
    return str(deploy.get("strategy", DEFAULT))
