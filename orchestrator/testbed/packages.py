"""What `testbed up --preload` installs into the testbed image: the Debian packages the hosts
of one architecture will ask for, read from the build (a host's `environment.system_packages`
after its overrides, and the package names a role's apt tasks, or its include of
orchestrate_common's `packages`, write out), never guessed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.compiler.roledeps import ROLE_IMPORTS
from orchestrator.fsutil import MAX_ROLE_FILE_BYTES, read_regular

# Debian package names (policy 5.6.1), with an optional :arch; anything else is not preloaded
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?")
APT_MODULES = ("ansible.builtin.apt", "apt")
COMPONENT = re.compile(r"[a-z][a-z-]*")


@dataclass(frozen=True)
class Preload:
    """What one architecture's testbed image gets: archive components and packages."""

    components: tuple[str, ...]
    packages: tuple[str, ...]  # installed as their tasks install them: without recommends
    recommending: tuple[str, ...] = ()  # those whose tasks install recommends too (nftables
    # pulls netbase's /etc/protocols this way, which `nft -c` needs)


def preloads(build_dir: str, data: dict[str, Any], hosts: list[str]) -> dict[str, Preload]:
    """Per architecture, for ``hosts`` of the build in ``build_dir``: the archive components
    their `environment.apt_components` name (zfsutils-linux is in contrib) and the packages."""
    role_packages: dict[str, tuple[set[str], set[str]]] = {}
    packages: dict[str, set[str]] = {}
    recommending: dict[str, set[str]] = {}
    components: dict[str, set[str]] = {}
    for name in hosts:
        host = data["hosts"][name]
        wanted = packages.setdefault(host["arch"], set())
        wanted |= _system_packages(host["config"])
        env = host["config"].get("environment")
        given = env.get("apt_components") if isinstance(env, dict) else None
        components.setdefault(host["arch"], {"main"}).update(
            c for c in given or [] if isinstance(c, str) and COMPONENT.fullmatch(c)
        )
        rich = recommending.setdefault(host["arch"], set())
        for role in host["roles"]:
            if role not in role_packages:
                role_packages[role] = _role_packages(os.path.join(build_dir, "roles", role))
            plain, full = role_packages[role]
            wanted |= plain
            rich |= full
    return {
        arch: Preload(
            tuple(sorted(components[arch])),
            _valid(names - recommending[arch]),
            _valid(recommending[arch]),
        )
        for arch, names in packages.items()
    }


def _valid(names: set[str]) -> tuple[str, ...]:
    return tuple(sorted(p for p in names if PACKAGE.fullmatch(p)))


def _system_packages(config: dict[str, Any]) -> set[str]:
    env = config.get("environment")
    if not isinstance(env, dict):
        return set()
    overrides = env.get("package_overrides") or {}
    names = set()
    for p in env.get("system_packages") or []:
        chosen = overrides.get(p, p) if isinstance(overrides, dict) else p
        if isinstance(chosen, str) and chosen:  # "" drops a package
            names.add(chosen)
    return names


def _role_packages(folder: str) -> tuple[set[str], set[str]]:
    """Package names an apt task of the role writes out (a templated name is left to apply):
    those installed without recommends, and those with."""
    plain: set[str] = set()
    full: set[str] = set()
    tasks = os.path.join(folder, "tasks")
    if not os.path.isdir(tasks):
        return plain, full
    for entry in sorted(os.listdir(tasks)):
        if entry.endswith((".yml", ".yaml")):
            raw, _st = read_regular(os.path.join(tasks, entry), MAX_ROLE_FILE_BYTES)
            try:
                doc = yaml.safe_load(raw)
            except yaml.YAMLError:
                continue  # ansible-lint and the run itself report a broken task file
            _apt_names(doc, plain, full)
    return plain, full


def _apt_names(node: Any, plain: set[str], full: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _apt_names(item, plain, full)
    elif isinstance(node, dict):
        for module in APT_MODULES:
            args = node.get(module)
            if isinstance(args, dict) and args.get("state", "present") == "present":
                if "default_release" in args:
                    continue  # from another suite, which the image does not have
                given = args.get("name")
                into = plain if args.get("install_recommends", True) is False else full
                _add_names([given] if isinstance(given, str) else given, into)
        _common_packages(node, plain, full)
        for key in ("block", "rescue", "always"):
            _apt_names(node.get(key), plain, full)


def _common_packages(task: dict[str, Any], plain: set[str], full: set[str]) -> None:
    """The names a role hands orchestrate_common's `packages` tasks (which install them the
    way an apt task of the role would)."""
    for module in ROLE_IMPORTS:
        args = task.get(module)
        if isinstance(args, dict) and args.get("tasks_from") == "packages":
            given = task.get("vars")
            given = given if isinstance(given, dict) else {}
            into = full if given.get("orchestrate_common_recommends") is True else plain
            _add_names(given.get("orchestrate_common_packages"), into)


def _add_names(names: Any, into: set[str]) -> None:
    """The package names of a list that are written out (a templated one is left to apply)."""
    for n in names if isinstance(names, list) else []:
        if isinstance(n, str) and "{{" not in n:
            into.add(n)
