"""Roles that roles use are copied into the build and hashed as its inputs: a role's meta
dependencies and the roles its tasks import, transitively, and those a module's own tasks
import; one that cannot be found is an error at the role that uses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from conftest import BUNDLED, Run

FLEET = {
    "fleet.yaml": """
        name: deps
        builders:
          x86_64: {arch: x86_64}
        hosts:
          one: {builder: x86_64, modules: [one.yaml]}
    """,
    "one.yaml": "imports: [web.yaml, gen.yaml]\n",
    "web.yaml": "role: web\n",
    "gen.yaml": """
        tasks:
          - name: Use the shared tasks
            ansible.builtin.include_role: {name: helper, tasks_from: extra}
    """,
    "roles/web/meta/main.yml": "dependencies: [{role: basic}]\n",
    "roles/web/tasks/main.yml": """
        - name: Use the plumbing
          ansible.builtin.import_role: {name: plumbing, tasks_from: apt_lists}
        - name: A templated name is left to Ansible
          ansible.builtin.include_role: {name: "{{ other }}"}
          vars: {other: x}
          when: false
    """,
    "roles/basic/tasks/main.yml": "- name: Nothing\n  ansible.builtin.debug: {msg: basic}\n",
    "roles/plumbing/meta/main.yml": "dependencies: [deeper]\n",
    "roles/plumbing/tasks/apt_lists.yml": "- name: Plumb\n  ansible.builtin.debug: {msg: p}\n",
    # Ansible's own tags are read as they are
    "roles/deeper/tasks/main.yml": "- name: D\n  ansible.builtin.debug: {msg: !unsafe '{{ d }}'}\n",
    "roles/helper/tasks/extra.yml": "- name: Help\n  ansible.builtin.debug: {msg: h}\n",
    "roles/unused/tasks/main.yml": "- name: Unused\n  ansible.builtin.debug: {msg: u}\n",
}


def test_dependencies_are_copied_and_hashed(
    cli: Callable[..., Run], fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    root = fleet(FLEET)
    out = tmp_path / "build"
    r = cli("--fleet", str(root), "compile", "-o", str(out))
    assert r.code == 0, r.err
    roles = {p.name for p in (out / "roles").iterdir()}
    # web's meta dependency, the role it imports and that role's own dependency, and the role
    # a module's tasks include; a role nothing uses is not copied
    # (and the generations' plumbing, in every build)
    assert roles == {
        "web",
        "basic",
        "plumbing",
        "deeper",
        "helper",
        "gen",
        "orchestrate_generations",
    }
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    assert "roles/deeper/tasks/main.yml" in inputs and "roles/helper/tasks/extra.yml" in inputs
    assert not any(name.startswith("roles/unused/") for name in inputs)


def test_a_missing_dependency_is_located_and_nothing_is_written(
    cli: Callable[..., Run], fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    files = {**FLEET, "roles/plumbing/meta/main.yml": "dependencies: [nowhere]\n"}
    root = fleet(files)
    out = tmp_path / "build"
    r = cli("--fleet", str(root), "compile", "-o", str(out))
    assert r.code == 1
    assert "roles/plumbing/meta/main.yml:1:16: role 'nowhere' not found" in r.err, r.err
    assert not out.exists()


def test_a_dependency_with_broken_yaml_is_located(
    cli: Callable[..., Run], fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    root = fleet({**FLEET, "roles/web/tasks/main.yml": "- name: x\n  debug: [unclosed\n"})
    r = cli("--fleet", str(root), "compile", "-o", str(tmp_path / "b"))
    assert r.code == 1 and "roles/web/tasks/main.yml:3:1: not valid YAML" in r.err, r.err
    assert "Traceback" not in r.err


def test_the_shipped_roles_share_their_plumbing(cli: Callable[..., Run], tmp_path: Path) -> None:
    """The package-list probe and the stopping of services a role no longer runs are written
    once, in orchestrate_common, which the bundled fleet's build carries."""
    out = tmp_path / "build"
    assert cli("--fleet", str(BUNDLED), "compile", "-o", str(out)).code == 0
    assert (out / "roles/orchestrate_common/tasks/apt_lists.yml").is_file()
    for role in sorted(p.name for p in (out / "roles").iterdir()):
        for task_file in (out / "roles" / role).glob("tasks/*.yml"):
            text = task_file.read_text()
            if role != "orchestrate_common":
                assert "/var/lib/apt/lists" not in text, task_file
                assert "/etc/init.d/{{" not in text or role == "exporters", task_file


def test_only_a_fleets_own_role_checks_its_arguments_again_at_run_time(
    cli: Callable[..., Run], fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    """The compile checked every role argument against its option's type; a generated or
    shipped role's argument spec says the same, so orchestrate's runs can turn Ansible's check
    off, while a fleet's own role may say more in its own spec and keeps it."""
    root = fleet(
        {
            "fleet.yaml": """
                name: specs
                builders:
                  x86_64: {arch: x86_64}
                hosts:
                  one: {builder: x86_64, modules: [own.yaml, gen.yaml, orchestrate:base.yaml]}
            """,
            "own.yaml": "options:\n  own.size: {type: integer, default: 1}\nrole: own\n",
            "roles/own/tasks/main.yml": "- name: Own\n  ansible.builtin.debug: {msg: own}\n",
            "gen.yaml": """
                options:
                  gen.size: {type: integer, default: 2}
                tasks:
                  - name: Generated
                    ansible.builtin.debug: {msg: gen}
            """,
        }
    )
    out = tmp_path / "build"
    r = cli("--fleet", str(root), "compile", "-o", str(out))
    assert r.code == 0, r.err
    site = yaml.safe_load((out / "site.yml").read_text())
    includes = {
        t["ansible.builtin.include_role"]["name"]: t["ansible.builtin.include_role"]
        for t in site[0]["tasks"]
        if "ansible.builtin.include_role" in t  # not the generation steps, imported
    }
    assert "rolespec_validate" not in includes["own"]
    for name in ("gen", "base"):
        check = includes[name]["rolespec_validate"]
        assert check == "{{ orchestrate_check_role_arguments | default(true) }}"
