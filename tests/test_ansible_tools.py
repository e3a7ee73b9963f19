"""Real Ansible tools read what `orchestrate compile` writes: ansible-inventory, ansible-playbook
(--syntax-check and a real local run with role argument validation) and ansible-lint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUNDLED, REPO, Run, snapshot

pytestmark = pytest.mark.ansible


def _env(build: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(build / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(build.parent / "tmp"),
        "ANSIBLE_HOME": str(build.parent),
    }


def _run(args: list[str], build: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=build, env=_env(build), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def bundled_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("bundled") / "build"
    assert main(["--fleet", str(BUNDLED), "compile", "--out", str(out)]) == 0
    return out


def test_ansible_inventory_sees_groups_and_connection_vars(bundled_build: Path) -> None:
    r = _run(["ansible-inventory", "--list"], bundled_build)
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    assert sorted(inv["arch_x86_64"]["hosts"]) == [
        "LINDA",
        "cortex-alpha",
        "data-storage",
        "terminal-zero",
    ]
    assert sorted(inv["arch_aarch64"]["hosts"]) == ["pi-1", "pi-2"]
    assert sorted(inv["builder_aarch64"]["hosts"]) == ["pi-1", "pi-2"]
    assert sorted(inv["tag_core"]["hosts"]) == ["cortex-alpha", "data-storage"]
    assert len(inv["role_base"]["hosts"]) == 6
    assert sorted(inv["role_orchestrate_secrets"]["hosts"]) == [
        "cortex-alpha",
        "data-storage",
        "terminal-zero",
    ]
    ds = inv["_meta"]["hostvars"]["data-storage"]
    # Ansible itself reports every string the fleet supplies as unsafe (never templated)
    assert (ds["ansible_host"], ds["ansible_port"], ds["ansible_user"]) == (
        {"__ansible_unsafe": "10.88.127.3"},
        1108,
        {"__ansible_unsafe": "deploy"},
    )
    prom = ds["orchestrate_config"]["services"]["prometheus"]
    assert prom["port"] == 8080


def test_orchestrate_inventory_matches_ansible_inventory(
    bundled_build: Path, cli: Callable[..., Run]
) -> None:
    theirs = json.loads(_run(["ansible-inventory", "--list"], bundled_build).stdout)
    r = cli("--fleet", str(BUNDLED), "inventory", "--list")
    ours = json.loads(r.out)
    assert ours["_meta"]["hostvars"] == theirs["_meta"]["hostvars"]
    for group, body in ours.items():
        if group not in ("_meta", "all"):
            assert sorted(body["hosts"]) == sorted(theirs[group]["hosts"]), group
    host = json.loads(cli("--fleet", str(BUNDLED), "inventory", "--host", "pi-1").out)
    assert host == theirs["_meta"]["hostvars"]["pi-1"]


def test_site_playbook_syntax_check(bundled_build: Path) -> None:
    r = _run(["ansible-playbook", "--syntax-check", "site.yml"], bundled_build)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ansible_lint_production_profile(bundled_build: Path) -> None:
    r = _run(
        ["ansible-lint", "--offline", "--profile", "production", "site.yml", "roles"], bundled_build
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stderr + r.stdout


def test_image_builder_role_and_playbook_pass_the_production_profile(tmp_path: Path) -> None:
    repo = REPO
    r = subprocess.run(
        ["ansible-lint", "--offline", "--profile", "production", "roles/image_builder",
         "playbooks/image.yml"],
        cwd=repo, env={**os.environ, "ANSIBLE_HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stderr + r.stdout


ROLE_FLEET = {
    "fleet.yaml": """
        name: t
        builders: {x86_64: {arch: x86_64}}
        hosts:
          local1: {builder: x86_64, modules: [web.yaml], deploy: {host: 127.0.0.1}}
    """,
    "web.yaml": """
        params:
          greeting: {type: string, default: hello}
        options:
          web.port: {$ref: "orchestrate:port", default: 8080}
        config:
          web.port: 8081
        tasks:
          - name: Show the port and the parameter
            ansible.builtin.debug:
              msg: "port={{ config.web.port }} greeting={{ params.greeting }}"
    """,
}


def _play(build: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    interp = f"ansible_python_interpreter={sys.executable}"
    return _run(["ansible-playbook", "site.yml", "-c", "local", "-e", interp, *extra], build)


def test_generated_role_runs_and_ansible_validates_its_arguments(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(ROLE_FLEET)
    assert cli("--fleet", str(root), "compile").code == 0
    build = root / ".orchestrate" / "build"
    ok = _play(build)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "port=8081 greeting=hello" in ok.stdout
    bad_config = json.dumps({"orchestrate_config": {"web": {"port": "not-a-port"}}})
    bad = _play(build, "-e", bad_config)
    assert bad.returncode != 0
    assert "Validation of arguments failed" in bad.stdout
    assert "web_port" in bad.stdout
    # orchestrate's own runs, whose arguments are the ones the compile checked, skip the check
    # (one task per role and host): the variable they set turns it off
    assert "Validating arguments" in ok.stdout
    unchecked = _play(build, "-e", '{"orchestrate_check_role_arguments": false}')
    assert unchecked.returncode == 0, unchecked.stdout + unchecked.stderr
    assert "port=8081 greeting=hello" in unchecked.stdout
    assert "Validating arguments" not in unchecked.stdout


def test_build_is_byte_identical_across_runs_and_locations(
    fleet: Callable[[dict[str, str]], Path], tmp_path: Path, cli: Callable[..., Run]
) -> None:
    first = tmp_path / "one"
    second = tmp_path / "elsewhere" / "two"
    assert cli("--fleet", str(BUNDLED), "compile", "--out", str(first)).code == 0
    copy = tmp_path / "copy-of-fleet"
    shutil.copytree(BUNDLED, copy, ignore=shutil.ignore_patterns(".orchestrate"))
    assert cli("--fleet", str(copy), "compile", "--out", str(second)).code == 0
    a, b = snapshot(first), snapshot(second)
    assert a == b
    manifest = json.loads(a["manifest.json"])
    assert set(manifest["outputs"]) == set(a) - {"manifest.json"}
    assert "fleet.yaml" in manifest["inputs"] and "modules/common.yaml" in manifest["inputs"]
    assert not any(str(tmp_path) in v.decode(errors="replace") for v in a.values())


def test_inventory_command_works_as_an_ansible_inventory_script(tmp_path: Path) -> None:
    script = tmp_path / "fleet-inventory"
    script.write_text(
        f'#!/bin/sh\nexec {sys.executable} -m orchestrator.cli --fleet {BUNDLED} inventory "$@"\n'
    )
    script.chmod(0o755)
    env = {**os.environ, "ANSIBLE_INVENTORY_ENABLED": "script"}
    r = subprocess.run(
        ["ansible-inventory", "-i", str(script), "--list"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    assert sorted(inv["arch_aarch64"]["hosts"]) == ["pi-1", "pi-2"]
    assert inv["_meta"]["hostvars"]["LINDA"]["ansible_port"] == 1108
    h = subprocess.run(
        ["ansible-inventory", "-i", str(script), "--host", "pi-2"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert json.loads(h.stdout)["orchestrate_host"]["arch"] == "aarch64"


def _canary_fleet(tmp: Path) -> dict[str, str]:
    """A module whose values, description, default, parameter and free-form key each hold a
    Jinja lookup that would create a file if Ansible ever templated it."""

    def canary(name: str) -> str:
        return "{{ lookup('pipe', 'touch " + str(tmp / name) + "') }}"

    return {
        "fleet.yaml": """
            name: t
            builders: {x86_64: {arch: x86_64}}
            hosts:
              local1:
                builder: x86_64
                modules: [{use: alert.yaml, with: {note: "NOTE"}}]
                deploy: {host: 127.0.0.1}
        """.replace("NOTE", canary("param")),
        "alert.yaml": f"""
            params:
              note: {{type: string}}
            options:
              alert.text:
                type: string
                description: "DESC"
              alert.fallback: {{type: string, default: "DEFAULT"}}
              alert.labels: {{type: object, additionalProperties: {{type: string}}, default: {{}}}}
              alert.out: {{type: string}}
            config:
              alert.text: "{{{{ $labels.instance }}}} is down VALUE"
              alert.labels: {{"KEY": "x"}}
              alert.out: "{tmp}"
            tasks:
              - name: Write the alert as a task sees it
                ansible.builtin.copy:
                  dest: "{{{{ config.alert.out }}}}/task.txt"
                  content: >-
                    {{{{ config.alert.text }}}}|{{{{ params.note }}}}|{{{{
                    config.alert.labels | to_json }}}}|{{{{ alert_alert_fallback }}}}
                  mode: "0600"
              - name: Write the alert as a template sees it
                ansible.builtin.template:
                  src: alert.j2
                  dest: "{{{{ config.alert.out }}}}/template.txt"
                  mode: "0600"
            templates:
              alert.j2: "{{{{ config.alert.text }}}}\\n"
        """.replace("DESC", canary("description").replace('"', '\\"'))
        .replace("DEFAULT", canary("default").replace('"', '\\"'))
        .replace("VALUE", canary("value").replace('"', '\\"'))
        .replace("KEY", canary("key").replace('"', '\\"')),
    }


def test_fleet_values_are_never_templated_by_ansible(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    root = fleet(_canary_fleet(out))
    r = cli("--fleet", str(root), "compile")
    assert r.code == 0, r.err
    play = _play(root / ".orchestrate" / "build")
    assert play.returncode == 0, play.stdout + play.stderr
    made = sorted(p.name for p in out.iterdir())
    assert made == ["task.txt", "template.txt"], f"a canary ran: {made}"
    task = (out / "task.txt").read_text()
    text, note, labels, fallback = task.split("|")
    assert text.startswith("{{ $labels.instance }} is down {{ lookup('pipe', 'touch ")
    assert note == "{{ lookup('pipe', 'touch " + str(out / "param") + "') }}"
    assert json.loads(labels) == {"{{ lookup('pipe', 'touch " + str(out / "key") + "') }}": "x"}
    assert fallback == "{{ lookup('pipe', 'touch " + str(out / "default") + "') }}"
    assert (out / "template.txt").read_text() == text + "\n"
