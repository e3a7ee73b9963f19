"""The content of a build, rendered in memory: file name -> bytes.

Layout (chosen for Ansible's speed on large fleets: group membership in one small JSON file,
each host's variables in its own JSON file that Ansible reads only for the hosts a play touches):

    ansible.cfg                 inventory, roles path and connection tuning
    inventory/hosts.json        groups: arch_*, builder_*, role_*, tag_*
    inventory/host_vars/H.json  connection variables, orchestrate_config, orchestrate_params
    roles/R/...                 one generated role per module with tasks
    site.yml                    one play over every host, roles in module order
    fleet.json                  {fleet, hosts, groups, images}: what `query` reads
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from orchestrator import strategy
from orchestrator.compiler.argspec import arg_name
from orchestrator.compiler.delivery import SecretsDelivery
from orchestrator.compiler.freshness import input_name
from orchestrator.compiler.roledeps import referenced_roles, with_dependencies
from orchestrator.compiler.unsafe import unsafe_json, unsafe_yaml
from orchestrator.compiler.yamlout import yaml_bytes
from orchestrator.errors import FleetErrors, Loc, Problem
from orchestrator.evaluator.expressions import plain
from orchestrator.evaluator.fleet import Evaluation, HostResult, role_name
from orchestrator.fsutil import MAX_ROLE_FILE_BYTES, read_regular
from orchestrator.loader.files import inside
from orchestrator.loader.fleet import ModuleFile
from orchestrator.naming import (
    ARCHES,
    GENERATIONS_ROLE,
    SECRETS_GROUP,
    SECRETS_ROLE,
    SECRETS_VAR,
    group_name,
)
from orchestrator.paths import shipped_roles_dir


def _json(data: Any) -> bytes:
    # compact, sorted keys, UTF-8: the same bytes json.dumps(sort_keys, separators=(",", ":"))
    # writes, five times faster (orjson), which matters with 10,000 host_vars files
    out: bytes = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    return out


def groups_of(ev: Evaluation, secrets: SecretsDelivery | None = None) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {f"arch_{a}": [] for a in ARCHES}
    if secrets is not None and secrets.delivered:
        groups[SECRETS_GROUP] = secrets.delivered
    for name in sorted(ev.hosts):
        h = ev.hosts[name]
        keys = [f"arch_{h.info['arch']}", group_name("builder", h.info["builder"])]
        keys += [group_name("tag", t) for t in h.info["tags"]]
        keys += [f"role_{r.name}" for r in h.roles]
        for key in dict.fromkeys(keys):
            groups.setdefault(key, []).append(name)
    clash = sorted(set(groups) & set(ev.hosts))
    if clash:  # Ansible would merge the host and the group of the same name
        raise FleetErrors(
            [
                Problem(
                    ev.spec.hosts[h].loc, f"host {h!r} has the name of a group", _GROUP_HINT, (h,)
                )
                for h in clash
            ]
        )
    return dict(sorted(groups.items()))


_GROUP_HINT = "arch_*, builder_*, role_* and tag_* name the groups orchestrate makes: rename it"


def host_vars(h: HostResult, secrets: SecretsDelivery | None = None) -> dict[str, Any]:
    """A host's variables, every string marked unsafe: the fleet's values are data."""
    deploy = h.info["deploy"]
    extra: dict[str, Any] = {}
    if deploy["user"] != "root":
        # the roles configure the system: a deploy user reaches root through sudo, as nixinate's
        # deploys do (a host's sudoers must let it: NOPASSWD, or --ask-become-pass by hand)
        extra["ansible_become"] = True
    if secrets is not None and h.name in secrets.host_vars:
        extra[SECRETS_VAR] = secrets.host_vars[h.name]
    variables: dict[str, Any] = unsafe_json(
        {
            **extra,
            "ansible_host": deploy["host"],
            "ansible_port": deploy["port"],
            "ansible_user": deploy["user"],
            "orchestrate_host": {
                k: h.info[k] for k in ("arch", "builder", "channel", "name", "tags")
            },
            "orchestrate_config": h.config,
            "orchestrate_params": {r.name: r.params for r in h.roles if r.params},
        }
    )
    return variables


# The files with an entry per host (incremental compiles replace those entries in place), and
# where each host's entry lies in them: (start, end) byte offsets, in host name order
HOST_FILES = ("fleet.json", "inventory.json")
Spans = dict[str, list[tuple[int, int]]]


def render_build(
    ev: Evaluation, secrets: SecretsDelivery | None
) -> tuple[dict[str, bytes], Spans | None]:
    """Every file of the build, and the spans of the host entries of :data:`HOST_FILES`
    (None in the unlikely case they could not be told apart)."""
    groups = groups_of(ev, secrets)
    out: dict[str, bytes] = {
        "ansible.cfg": _ansible_cfg(len(ev.hosts), strategy.fleet_default(ev.spec.deploy)).encode(),
        "inventory/hosts.json": _json(_inventory_groups(groups)),
    }
    # each host's variables are serialised once: inventory.json embeds the same bytes
    hostvars: dict[str, bytes] = {}
    for name, h in ev.hosts.items():
        data = out[f"inventory/host_vars/{name}.json"] = _json(host_vars(h, secrets))
        hostvars[name] = data[:-1]  # without _json's final newline
    roles = _generated_roles(ev)
    roles[GENERATIONS_ROLE] = _read_tree(os.path.join(shipped_roles_dir(), GENERATIONS_ROLE))
    if secrets is not None and secrets.delivered:
        roles[SECRETS_ROLE] = _read_tree(os.path.join(shipped_roles_dir(), SECRETS_ROLE))
        for file, data in secrets.ciphertexts.items():
            out[f"secrets/{file}"] = data
    for rname, folder in existing_roles(ev).items():
        roles[rname] = _read_tree(folder)
    for rname, files in roles.items():
        for fname, data in files.items():
            out[f"roles/{rname}/{fname}"] = data
    out["site.yml"] = yaml_bytes(_site(ev, groups))
    entries = {n: host_entry(h) for n, h in ev.hosts.items()}
    fleet, fleet_spans = with_hosts(query_data(ev, groups, HOLE), ("hosts",), entries)
    inventory, inv_spans = with_hosts(
        inventory_document(HOLE, groups), ("_meta", "hostvars"), hostvars
    )
    out["fleet.json"], out["inventory.json"] = fleet, inventory
    if fleet_spans is None or inv_spans is None:
        return out, None
    return out, {"fleet.json": fleet_spans, "inventory.json": inv_spans}


# Where the hosts' entries go in a document: no other byte of orjson's output is a NUL (it
# writes the character as \u0000), so the one place it is found is this one.
HOLE = orjson.Fragment(b"\x00")


def with_hosts(
    doc: dict[str, Any], where: tuple[str, ...], entries: dict[str, bytes]
) -> tuple[bytes, list[tuple[int, int]] | None]:
    """``doc`` as :func:`_json` writes it, with the object of ``entries`` (host name -> its
    JSON) at ``where`` (which holds :data:`HOLE`), and the span of each entry, in name order.
    The document is written once, with the entries in place; where they begin is found by
    writing it with the hole first, which is small."""
    at = _json(doc).index(b"\x00")
    holder = doc
    for part in where[:-1]:
        holder = holder[part]
    holder[where[-1]] = {n: orjson.Fragment(e) for n, e in entries.items()}
    data = _json(doc)
    spans: list[tuple[int, int]] = []
    pos = at + 1
    for name in sorted(entries):
        key = orjson.dumps(name) + b":"
        entry = entries[name]
        if not (data.startswith(key, pos) and data.startswith(entry, pos + len(key))):
            return data, None  # the entries came out in another order: none replaced in place
        pos += len(key)
        spans.append((pos, pos + len(entry)))
        pos += len(entry) + 1
    return data, spans


def host_entry(h: HostResult) -> bytes:
    """A host's entry in fleet.json."""
    entry = {
        **h.info,
        "config": h.config,
        "roles": [r.name for r in h.roles],
        "params": {r.name: r.params for r in h.roles if r.params},
    }
    if h.checks:  # what a rollout runs after the host's roles (docs/rollout.md)
        entry["checks"] = list(h.checks)
    data: bytes = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    return data


def inventory_document(hostvars: Any, groups: dict[str, list[str]]) -> dict[str, Any]:
    """Ansible's dynamic-inventory ``--list`` document, served by `orchestrate inventory`."""
    members = {g: {"hosts": hosts} for g, hosts in groups.items() if hosts}
    return {
        "_meta": {"hostvars": hostvars},
        "all": {"children": sorted(["ungrouped", *members])},
        **members,
    }


def query_data(ev: Evaluation, groups: dict[str, list[str]], hosts: Any) -> dict[str, Any]:
    """fleet.json with ``hosts`` for its hosts (see :func:`host_entry`)."""
    images = {
        n: {
            "name": n,
            "hosts": list(i.hosts),
            "format": i.format,
            "arch": sorted({ev.hosts[h].info["arch"] for h in i.hosts}),
        }
        for n, i in ev.spec.images.items()
    }
    return {
        "fleet": {"name": ev.spec.name, "channels": ev.spec.channels},
        "hosts": hosts,
        "groups": groups,
        "images": images,
    }


def _inventory_groups(groups: dict[str, list[str]]) -> dict[str, Any]:
    children = {g: {"hosts": dict.fromkeys(members)} for g, members in groups.items() if members}
    return {"all": {"children": children}}


def _ansible_cfg(hosts: int, play_strategy: str) -> str:
    """The tuned configuration: each setting is there for speed on fleets (see BENCHMARKS.md).
    orchestrate's runs set the strategy in their environment (a flag may change it)."""
    forks = max(5, min(50, hosts))  # every host at once up to 50; Ansible's default is 5
    # Neither the strategy nor where Mitogen is installed is written here: a build is the same
    # whoever compiles it, and ansible-playbook by hand runs on it as it is.
    mitogen = (
        "# orchestrate's runs use Mitogen (deploy.strategy), named in their environment:\n"
        "# ANSIBLE_STRATEGY=mitogen_linear and ANSIBLE_STRATEGY_PLUGINS (docs/runs.md)\n"
        if play_strategy == strategy.MITOGEN
        else ""
    )
    return (
        "# Generated by orchestrate; relative paths are relative to this file.\n"
        "[defaults]\n"
        "inventory = inventory/hosts.json\n"
        "roles_path = roles\n"
        f"forks = {forks}\n"
        "# facts at most once an hour per host, kept beside the build across compiles\n"
        "gathering = smart\n"
        "fact_caching = jsonfile\n"
        "fact_caching_connection = ../facts\n"
        "fact_caching_timeout = 3600\n"
        "# Debian hosts have python3 here: no interpreter discovery round trip\n"
        "interpreter_python = /usr/bin/python3\n"
        "retry_files_enabled = False\n"
        f"{mitogen}"
        "\n[inventory]\n"
        "enable_plugins = yaml\n"
        "\n[ssh_connection]\n"
        "# one SSH round trip per module, over a connection kept open between tasks\n"
        "pipelining = True\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=300s"
        " -o PreferredAuthentications=publickey\n"
    )


def _role_files(ev: Evaluation) -> dict[str, ModuleFile]:
    """Generated roles by name; two modules claiming one name is an error."""
    found: dict[str, ModuleFile] = {}
    problems = []
    for f in ev.modules.values():
        if f.tasks is None:
            continue
        name = role_name(f, ev.spec.root)
        if name in found and found[name].path != f.path:
            problems.append(
                Problem(
                    f.loc,
                    f"role {name!r} is generated from two modules "
                    f"({found[name].path} and {f.path})",
                    "give one a `role:` name",
                )
            )
        found[name] = f
    if problems:
        raise FleetErrors(problems)
    return dict(sorted(found.items()))


def _generated_roles(ev: Evaluation) -> dict[str, dict[str, bytes]]:
    roles = {}
    from orchestrator.compiler.rolespecs import interface_files

    for name, f in _role_files(ev).items():
        files = {
            "tasks/main.yml": yaml_bytes(plain(f.tasks) or []),
            "meta/main.yml": yaml_bytes(
                {
                    "galaxy_info": unsafe_yaml(
                        {
                            "author": "orchestrate",
                            "description": f"Generated from the module {_module_name(f, ev)}.",
                            "license": "MIT",
                            "min_ansible_version": "2.15",
                            "platforms": [{"name": "Debian", "versions": ["bookworm", "trixie"]}],
                        }
                    ),
                    "dependencies": [],
                }
            ),
            **interface_files(name, f, f"Role of the fleet module {_module_name(f, ev)}."),
        }
        if f.handlers:
            files["handlers/main.yml"] = yaml_bytes(plain(f.handlers))
        for tname, text in sorted(f.templates.items()):
            files[f"templates/{tname}"] = text.encode()
        roles[name] = files
    return roles


def _module_name(f: ModuleFile, ev: Evaluation) -> str:
    return input_name(f.path, ev.spec.root)


def _role_order(ev: Evaluation) -> list[str]:
    """One order for all hosts that keeps each host's module order (a stable topological sort)."""
    after: dict[str, set[str]] = {}
    first_seen: dict[str, int] = {}
    for h in ev.hosts.values():
        names = [r.name for r in h.roles]
        for i, n in enumerate(names):
            first_seen.setdefault(n, len(first_seen))
            after.setdefault(n, set()).update(names[:i])
    order: list[str] = []
    pending = sorted(first_seen, key=first_seen.__getitem__)
    while pending:
        ready = [n for n in pending if not (after[n] - set(order) - {n})]
        pick = ready[0] if ready else pending[0]  # conflicting orders: first seen wins
        order.append(pick)
        pending.remove(pick)
    return order


def _site(ev: Evaluation, groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    order = _role_order(ev)
    generated = _role_files(ev)
    # the roles whose arguments the compile has checked against the very types their
    # argument specs declare (generated from the module, or shipped with it): Ansible's check
    # of them again is one task per role and host, and orchestrate's runs skip it
    checked = set(generated)
    own = role_dirs(ev.spec.root)[0]
    # a role named by `role:` (shipped or the fleet's own) gets its module's options as
    # arguments, like a generated one
    for f in ev.modules.values():
        if f.role and f.tasks is None and f.options and f.role not in generated:
            generated[f.role] = f
            if not os.path.isdir(os.path.join(own, f.role)):
                checked.add(f.role)
    hosts = sorted({h for arch in ARCHES for h in groups.get(f"arch_{arch}", [])})
    if not hosts:
        return []
    # One play over every host, so that the boards and the servers converge side by side
    # rather than one architecture after the other; a role runs where its group says.
    members = set(hosts)
    used = [r for r in order if members & set(groups.get(f"role_{r}", []))]
    if members & set(groups.get(SECRETS_GROUP, [])):
        used.insert(0, SECRETS_ROLE)  # before the services that read the secrets
    return [
        {
            "name": "Converge the fleet's hosts",
            "hosts": "all",
            # facts: gathered when the configuration says so (`gathering = smart` and a
            # fact cache in the build's ansible.cfg), and only the minimal subset
            "module_defaults": {"ansible.builtin.setup": {"gather_subset": ["min"]}},
            # batches and failure threshold come from `apply --serial/--max-fail-percent`
            "serial": "{{ orchestrate_serial | default('100%') }}",
            "max_fail_percentage": "{{ orchestrate_max_fail_percent | default(100) }}",
            # Play variables are templated where they are used: inside a role, `params`
            # is that role's bound parameters and `config` the host's configuration.
            "vars": {
                "config": "{{ orchestrate_config }}",
                "params": "{{ orchestrate_params[ansible_role_name] | default({}) }}",
            },
            "tasks": [
                _generation_step("begin"),
                *(_role_entry(r, generated.get(r), r in checked) for r in used),
                _generation_step("end"),
            ],
        }
    ]


def _generation_step(step: str) -> dict[str, Any]:
    """The first (``begin``) or last (``end``) task of the play: the host's generation of this
    apply (docs/rollout.md). Imported, not included: its tasks cost no include on every host."""
    return {
        "name": f"Generation: {step}",
        "ansible.builtin.import_role": {"name": GENERATIONS_ROLE, "tasks_from": step},
    }


def _role_entry(name: str, f: ModuleFile | None, checked: bool) -> dict[str, Any]:
    """One role as a task of the play: included where the host's groups say it runs. An
    include a host skips is one skipped task for it; a role listed under `roles:` with a
    `when` is every task of the role skipped, one at a time, on every host that does not run
    it (most of a run's time, on a fleet whose hosts run different roles)."""
    include: dict[str, Any] = {"name": name}
    if checked:
        # orchestrate's own runs pass false (see executor/runner.py); a run by hand, whose
        # extra variables may replace what the compile checked, has Ansible check them
        include["rolespec_validate"] = "{{ orchestrate_check_role_arguments | default(true) }}"
    entry: dict[str, Any] = {
        "name": f"Run the role {name}",
        "ansible.builtin.include_role": include,
        "when": f"'role_{name}' in group_names",
    }
    if f is not None and f.options:
        # role arguments: checked by the compile, and by Ansible against the role's
        # meta/argument_specs.yml when it is the fleet's own role
        entry["vars"] = {
            arg_name(name, d): "{{ " + _config_ref(d.path) + " | default(None) }}"
            for d in f.options
        }
    return entry


def _config_ref(path: tuple[str, ...]) -> str:
    """Jinja for the option at ``path`` of the play's ``config``: dotted where a key can be an
    attribute (short lines in site.yml), subscripted where it could not or would name a dict
    method (``config.x.items`` is the method, not the key)."""
    ref = "config"
    for key in path:
        plain = key.isidentifier() and not hasattr(dict, key)
        ref += f".{key}" if plain else f"[{key!r}]"
    return ref


def role_dirs(root: str) -> list[str]:
    """Where a module's `role: NAME` is looked up: the fleet's roles/, then the shipped ones."""
    return [os.path.join(root, "roles"), shipped_roles_dir()]


def existing_roles(ev: Evaluation) -> dict[str, str]:
    """Roles named by modules without tasks, found on disk, and the roles they and generated
    roles use (meta dependencies, `import_role`/`include_role`); copied into the build."""
    found: dict[str, str] = {}
    problems = []
    dirs = role_dirs(ev.spec.root)
    for f in ev.modules.values():
        if f.role is None or f.tasks is not None or f.role in found:
            continue
        folder = _find_role(dirs, f.role)
        if folder is None:
            problems.append(
                Problem(
                    f.role_loc,
                    f"role {f.role!r} not found",
                    f"looked in {' and '.join(dirs)}; or give the module `tasks`",
                )
            )
            continue
        found[f.role] = folder
    if problems:
        raise FleetErrors(problems)
    generated = _role_files(ev)
    wanted = [
        (dep, f.loc)
        for f in generated.values()
        for dep in referenced_roles([plain(f.tasks), plain(f.handlers)])
        if dep not in generated
    ]
    return with_dependencies(found, wanted, lambda name: _find_role(dirs, name))


def _find_role(dirs: list[str], name: str) -> str | None:
    return next((os.path.join(d, name) for d in dirs if os.path.isdir(os.path.join(d, name))), None)


def _read_tree(folder: str) -> dict[str, bytes]:
    """A role's files, to copy into the build: regular files inside the role folder only (a
    link out of it, a FIFO or a device is refused, not followed or read), each under a size
    cap."""
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    for base, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "molecule"))
        for d in dirs:
            if os.path.islink(os.path.join(base, d)):
                problems.append(Problem(Loc(os.path.join(base, d), 1, 1), _LINKED_FOLDER))
        for n in sorted(names):
            path = os.path.join(base, n)
            if not inside(path, (folder,)):
                problems.append(Problem(Loc(path, 1, 1), "links out of its role: not copied"))
                continue
            try:
                files[os.path.relpath(path, folder)] = read_regular(path, MAX_ROLE_FILE_BYTES)[0]
            except OSError as exc:
                problems.append(Problem(Loc(path, 1, 1), f"cannot copy: {exc.strerror or exc}"))
    if problems:
        raise FleetErrors(problems)
    return files


_LINKED_FOLDER = "a linked folder in a role is not copied: make it a real folder"
