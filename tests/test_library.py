"""The module library shipped with orchestrate: its modules load, its roles' interfaces and
docs/options.md are in sync with the modules, fleets import it by `orchestrate:` name, and every
role passes its molecule scenario in podman containers (the real `orchestrate test`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Run

from orchestrator.compiler.rolespecs import library_modules

ROLES = REPO / "roles"


def test_generated_role_interfaces_and_options_doc_are_in_sync() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.compiler.rolespecs"],
        capture_output=True,
        text=True,
        check=False,
    )
    hint = "run `python3 -m orchestrator.compiler.rolespecs --write`:\n"
    assert r.returncode == 0, hint + r.stdout


def test_every_library_module_has_a_tested_role_with_argument_specs() -> None:
    modules = library_modules()
    assert {"orchestrate:base.yaml", "orchestrate:environment.yaml"} <= set(modules)
    for name, f in modules.items():
        assert f.role, name
        role = ROLES / f.role
        specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
        declared = set(specs["argument_specs"]["main"]["options"])
        assert declared == {f"{f.role}_" + "_".join(d.path) for d in f.options}, name
        assert (role / "molecule/default/molecule.yml").is_file(), name
        assert (role / "molecule/default/verify.yml").is_file(), name
        for d in f.options:
            assert d.schema.get("description"), f"{name}: {d.name} has no description"


def test_options_library_lists_every_shipped_option(cli: Callable[..., Run]) -> None:
    r = cli("options", "--library", "--json")
    assert r.code == 0
    import json

    listed = {row["path"] for row in json.loads(r.out)}
    assert listed == {d.name for f in library_modules().values() for d in f.options}


def test_a_fleet_imports_the_library_by_name(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: lib
                builders: {x86_64: {arch: x86_64}}
                defaults: [common.yaml]
                deploy: {port: 1108}
                hosts: {h1: {builder: x86_64}}
            """,
            "common.yaml": """
                imports: [orchestrate:base.yaml, orchestrate:networking/firewall.yaml]
                config:
                  system.timezone: Europe/Berlin
            """,
        }
    )
    r = cli("--fleet", str(root), "compile")
    assert r.code == 0, r.err
    site = yaml.safe_load((root / ".orchestrate/build/site.yml").read_text())
    roles = {e["role"]: e for e in site[0]["roles"]}
    assert "base_system_timezone" in roles["base"]["vars"]
    import json

    host = json.loads((root / ".orchestrate/build/inventory/host_vars/h1.json").read_text())
    config = host["orchestrate_config"]
    assert config["services"]["openssh"]["port"] == 1108 == host["ansible_port"]
    assert config["networking"]["firewall"]["allowed_tcp_ports"] == [1108]
    assert (root / ".orchestrate/build/roles/firewall/templates/nftables.conf.j2").is_file()
    assert not (root / ".orchestrate/build/roles/firewall/molecule").exists()


@pytest.mark.containers
def test_every_shipped_role_passes_molecule(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "test"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=3600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    n = len({f.role for f in library_modules().values()})
    assert r.returncode == 0, r.stderr[-6000:]
    assert f"{n} of {n} role(s) passed" in r.stderr
