"""How runs drive hosts: Mitogen by default, Ansible's own strategy as the fallback (fleet.yaml
or a flag), the fleet's deploy-all settings under the flags, and testbed host keys checked as a
real host's are. The runs themselves are tests/test_deploy_e2e.py's (both strategies) and
tests/test_bundled_e2e.py's (Mitogen, aarch64 under emulation)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Run, orchestrate

from orchestrator import strategy
from orchestrator.errors import UsageError
from orchestrator.executor.connection import connection_overrides
from orchestrator.executor.deploy import Options
from orchestrator.testbed import manager


def _fleet(deploy: str = "") -> dict[str, str]:
    return {
        "fleet.yaml": f"""
name: t
builders: {{x86_64: {{arch: x86_64}}}}
{deploy}
hosts:
  a: {{builder: x86_64}}
""",
    }


def test_the_build_runs_on_mitogen_from_its_installed_package(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(_fleet())
    assert cli("--fleet", str(root), "compile").code == 0
    cfg = (root / ".orchestrate/build/ansible.cfg").read_text()
    lines = dict(ln.split(" = ", 1) for ln in cfg.splitlines() if " = " in ln)
    assert "ANSIBLE_STRATEGY=mitogen_linear" in cfg  # says how runs drive the hosts
    # loaded from where pip put it, which each run names (a build is the same whoever compiles
    # it, and ansible-playbook by hand runs on it as it is): nothing of Mitogen is copied into
    # the build, and no path of this machine is in it
    assert "strategy" not in lines and "strategy_plugins" not in lines
    assert strategy.plugin_dir() not in cfg
    assert not list((root / ".orchestrate/build").rglob("mitogen*"))


def test_a_fleet_can_choose_ansibles_own_strategy(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(_fleet("deploy: {strategy: ansible}"))
    assert cli("--fleet", str(root), "compile").code == 0
    assert "mitogen" not in (root / ".orchestrate/build/ansible.cfg").read_text()


def test_an_unknown_strategy_is_a_located_error(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(_fleet("deploy: {strategy: turbo}"))
    r = cli("--fleet", str(root), "compile")
    assert r.code == 1
    assert "fleet.yaml:3:10: deploy.strategy" in r.err and "turbo" in r.err, r.err
    assert not (root / ".orchestrate/build").exists()
    bad = orchestrate(root, "plan", "--offline", "--strategy", "turbo")
    assert bad.returncode == 1 and "invalid choice: 'turbo'" in bad.stderr, bad.stderr


def test_flags_win_over_the_fleets_deploy_settings() -> None:
    fleet = {"forks": 3, "serial": 2, "max_fail_percent": 10, "strategy": "ansible"}
    taken = Options().resolved(fleet)
    assert (taken.forks, taken.serial, taken.max_fail_percent, taken.strategy) == (
        3,
        "2",
        10,
        "ansible",
    )
    given = Options(forks=7, serial="50%", max_fail_percent=0, strategy="mitogen")
    kept = given.resolved(fleet)
    assert (kept.forks, kept.serial, kept.max_fail_percent, kept.strategy) == (
        7,
        "50%",
        0,
        "mitogen",
    )
    assert Options().resolved({}).strategy == strategy.DEFAULT == "mitogen"
    with pytest.raises(UsageError, match="--strategy 'fast': choose mitogen or ansible"):
        Options(strategy="fast")


def test_a_runs_environment_names_its_strategy() -> None:
    mitogen = strategy.envvars("mitogen")
    assert mitogen["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert os.path.isfile(os.path.join(mitogen["ANSIBLE_STRATEGY_PLUGINS"], "mitogen_linear.py"))
    # set every time, so that `--strategy ansible` wins over the build's ansible.cfg
    assert strategy.envvars("ansible") == {"ANSIBLE_STRATEGY": "linear"}


def _host(port: int, host_key: str) -> manager.TestbedHost:
    return manager.TestbedHost(f"c{port}", "127.0.0.1", port, "root", "/k", "x86_64", host_key)


def test_testbed_host_keys_are_checked(tmp_path: Path) -> None:
    state = tmp_path / ".orchestrate"
    manager.save_record(
        str(state), {"a": _host(22001, "ssh-ed25519 AAAAone"), "b": _host(22002, "")}
    )
    known = Path(manager.known_hosts_path(str(state)))
    # only the containers whose key the testbed gave them are listed, each at its own port
    assert known.read_text() == "[127.0.0.1]:22001 ssh-ed25519 AAAAone\n"
    said: list[str] = []
    out = connection_overrides(str(tmp_path), ["a", "b"], said.append)
    args = out["a"]["ansible_ssh_common_args"]
    assert f"UserKnownHostsFile={known}" in args and "StrictHostKeyChecking=yes" in args
    assert "ansible_host_key_checking" not in out["a"]
    # a container started before the testbed knew host keys is reached as before, and said so
    assert "StrictHostKeyChecking=no" in out["b"]["ansible_ssh_common_args"]
    assert out["b"]["ansible_host_key_checking"] is False
    assert any("b started before the testbed knew host keys" in s for s in said), said
    record = json.loads((state / "testbed.json").read_text())
    assert record["hosts"]["a"]["host_key"] == "ssh-ed25519 AAAAone"


def test_the_testbed_skips_ports_the_nat_table_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = "\n".join(
        [
            "*nat",
            "-A NETAVARK-DN-1 -s 127.0.0.1/32 -d 127.0.0.1/32 -p tcp -m tcp --dport 22001 "
            "-j NETAVARK-HOSTPORT-SETMARK",
            "-A NETAVARK-DN-1 -d 127.0.0.1/32 -p tcp -m tcp --dport 22001 -j DNAT "
            "--to-destination 10.88.0.16:22",
            "-A NETAVARK-DN-1 -d 127.0.0.1/32 -p tcp -m tcp --dport 22003 -j DNAT "
            "--to-destination 10.88.0.17:2222",
            "COMMIT",
        ]
    )
    assert manager.forwards_in(rules) == {22001, 22003}
    assert manager.forwards_in("") == set()
    monkeypatch.setattr(manager, "forwarded_ports", lambda: {22001, 22003})
    assert next(manager.free_ports({22002})) >= 22004
