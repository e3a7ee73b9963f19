"""Roles that other roles use: `dependencies` in meta/main.yml and `import_role`/`include_role`
with a literal name in tasks and handlers. The compiler copies them into the build beside the
roles modules name, and hashes them as inputs, so a build never refers to a role it lacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from orchestrator.errors import FleetErrors, Loc, Problem
from orchestrator.fsutil import MAX_ROLE_FILE_BYTES, read_regular
from orchestrator.loader.files import inside

# the task keys that name another role to run
ROLE_IMPORTS = frozenset(
    {"import_role", "include_role", "ansible.builtin.import_role", "ansible.builtin.include_role"}
)
# the files of a role where another role can be named
_FOLDERS = ("tasks", "handlers")


def referenced_roles(data: Any) -> set[str]:
    """Role names that tasks (as data) import or include by a literal name (a templated one is
    left to Ansible: it cannot be known before the run)."""
    found: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                named = key in ROLE_IMPORTS and isinstance(value, dict)
                name = value.get("name") if named else None
                if isinstance(name, str) and "{{" not in name:
                    found.add(name)
                else:
                    stack.append(value)
    return found


def _literal(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and "{{" not in node.value:
        return str(node.value)
    return None


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                found: yaml.Node = v
                return found
    return None


def _loc(path: str, node: yaml.Node) -> Loc:
    return Loc(path, node.start_mark.line + 1, node.start_mark.column + 1)


def _imports(path: str, root: yaml.Node | None) -> dict[str, Loc]:
    """Roles named by import_role/include_role anywhere in a task file, where they are named.
    Composed, not constructed: positions for errors, and Ansible's own tags need no meaning."""
    found: dict[str, Loc] = {}
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = _literal(_get(v, "name")) if k.value in ROLE_IMPORTS else None
                if name is not None:
                    found.setdefault(name, _loc(path, v))
                else:
                    stack.append(v)
    return found


def _meta_dependencies(path: str, root: yaml.Node | None) -> dict[str, Loc]:
    deps = _get(root, "dependencies") if root is not None else None
    found: dict[str, Loc] = {}
    for dep in deps.value if isinstance(deps, yaml.SequenceNode) else []:
        name = _literal(dep) or _literal(_get(dep, "role")) or _literal(_get(dep, "name"))
        if name is not None:
            found.setdefault(name, _loc(path, dep))
    return found


def _compose(path: str) -> yaml.Node | None:
    try:
        return yaml.compose(read_regular(path, MAX_ROLE_FILE_BYTES)[0], Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        message = f"not valid YAML: {getattr(exc, 'problem', exc)}"
        raise FleetErrors([Problem(loc, message)]) from None


def _plain_file_inside(path: str, folder: str) -> bool:
    return not os.path.islink(path) and os.path.isfile(path) and inside(path, (folder,))


def role_dependencies(folder: str) -> dict[str, Loc]:
    """The roles a role on disk uses, each with where it is named."""
    names: dict[str, Loc] = {}
    meta = os.path.join(folder, "meta", "main.yml")
    if _plain_file_inside(meta, folder):
        names.update(_meta_dependencies(meta, _compose(meta)))
    for sub in _FOLDERS:
        base = os.path.join(folder, sub)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, name)
            # a link out of the role, a FIFO or a device: the copy refuses it, with its place
            if name.endswith((".yml", ".yaml")) and _plain_file_inside(path, folder):
                names = {**_imports(path, _compose(path)), **names}
    return names


def with_dependencies(
    roles: dict[str, str], wanted: Iterable[tuple[str, Loc]], find: Callable[[str], str | None]
) -> dict[str, str]:
    """``roles`` (name -> folder) and every role they use, transitively. ``wanted`` adds the
    roles that generated roles (a module's `tasks`) name, with where; ``find`` looks one up."""
    found = dict(roles)
    todo = list(wanted)
    for folder in roles.values():
        todo.extend(role_dependencies(folder).items())
    problems: list[Problem] = []
    while todo:
        dep, loc = todo.pop()
        if dep in found:
            continue
        located = find(dep)
        if located is None:
            problems.append(Problem(loc, f"role {dep!r} not found", _MISSING))
            found[dep] = ""  # reported once
            continue
        found[dep] = located
        todo.extend(role_dependencies(located).items())
    if problems:
        raise FleetErrors(sorted(problems, key=lambda p: str(p.loc)))
    return dict(sorted(found.items()))


_MISSING = "a role used here is looked up in the fleet's roles/ folder, then the shipped roles"
