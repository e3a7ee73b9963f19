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
from ansible.parsing.yaml.loader import AnsibleLoader
from conftest import REPO, Run

from orchestrator.loader.library import library_modules

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
        specs = yaml.load((role / "meta/argument_specs.yml").read_text(), Loader=AnsibleLoader)
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

    listed = {row["path"] for row in json.loads(r.out)["options"]}
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
    tasks = site[0]["tasks"]
    roles = {e["ansible.builtin.include_role"]["name"]: e for e in tasks[1:-1]}
    assert [t["name"] for t in (tasks[0], tasks[-1])] == ["Generation: begin", "Generation: end"]
    assert "base_system_timezone" in roles["base"]["vars"]
    import json

    host = json.loads((root / ".orchestrate/build/inventory/host_vars/h1.json").read_text())
    config = host["orchestrate_config"]
    assert config["services"]["openssh"]["port"] == 1108 == host["ansible_port"]
    assert config["networking"]["firewall"]["allowed_tcp_ports"] == [1108]
    assert (root / ".orchestrate/build/roles/firewall/templates/nftables.conf.j2").is_file()
    assert not (root / ".orchestrate/build/roles/firewall/molecule").exists()


SERVICES_FLEET = {
    "fleet.yaml": """
        name: mon
        builders: {x86_64: {arch: x86_64}}
        defaults: [common.yaml]
        hosts:
          mon: {builder: x86_64, modules: [mon.yaml], deploy: {host: 10.0.0.1}}
          web: {builder: x86_64, modules: [web.yaml], deploy: {host: 10.0.0.2}}
          dns: {builder: x86_64, modules: [dns.yaml], deploy: {host: 10.0.0.3}}
          quiet: {builder: x86_64, deploy: {host: 10.0.0.4}}
    """,
    "common.yaml": "imports: [orchestrate:services/exporters.yaml]\n",
    "mon.yaml": """
        imports: [orchestrate:services/prometheus.yaml, orchestrate:services/reverse_proxy.yaml]
        config:
          services.prometheus: {enable: true, port: 9091}
          services.prometheus.scrape_configs:
            - {job_name: extra, targets: ["192.0.2.9:9999"]}
          services.reverse_proxy:
            enable: true
            locations:
              /grafana/:
                proxy_pass: 'http://${hosts.web.deploy.host}:${hosts.web.config.services.prometheus.exporters.node.port}'
    """,
    "web.yaml": "config:\n  services.prometheus.exporters.node.enable: true\n",
    "dns.yaml": """
        config:
          services.prometheus.exporters.node: {enable: true, listen_address: 10.9.0.3, port: 9200}
          services.prometheus.exporters.dnsmasq: {enable: true, port: 3101}
    """,
}


def _config(root: Path, cli: Callable[..., Run], host: str, path: str) -> object:
    import json

    r = cli("--fleet", str(root), "query", f"hosts.{host}.config.{path}")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_prometheus_scrapes_exactly_the_hosts_that_enable_exporters(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(SERVICES_FLEET)
    jobs = _config(root, cli, "mon", "services.prometheus.scrape_configs")
    assert jobs == [
        {"job_name": "dnsmasq", "targets": ["10.0.0.3:3101"]},
        {"job_name": "node", "targets": ["10.9.0.3:9200", "10.0.0.2:9100"]},
        {"job_name": "extra", "targets": ["192.0.2.9:9999"]},
    ]
    # the exporters' ports are opened on their hosts, prometheus's own is not by default
    assert _config(root, cli, "dns", "networking.firewall.allowed_tcp_ports") == [22, 9200, 3101]
    assert _config(root, cli, "mon", "networking.firewall.allowed_tcp_ports") == [22, 80]
    # the proxy's upstream is read from another host's configuration
    assert _config(root, cli, "mon", "services.reverse_proxy.locations") == {
        "/grafana/": {"proxy_pass": "http://10.0.0.2:9100"}
    }
    # a host that stops exporting disappears from the targets; discovery can be turned off
    (root / "web.yaml").write_text("config: {}\n")
    jobs = _config(root, cli, "mon", "services.prometheus.scrape_configs")
    assert [j["targets"] for j in jobs] == [
        ["10.0.0.3:3101"],
        ["10.9.0.3:9200"],
        ["192.0.2.9:9999"],
    ]
    mon = (root / "mon.yaml").read_text()
    (root / "mon.yaml").write_text(
        mon.replace("port: 9091}", "port: 9091, discover_exporters: false}")
    )
    assert _config(root, cli, "mon", "services.prometheus.scrape_configs[].job_name") == ["extra"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('"192.0.2.9:9999"', '"192.0.2.9"'),
            "mon.yaml:4:3: services.prometheus.scrape_configs.2.targets.0",
        ),
        (
            ("proxy_pass: 'http:", "proxy_pass: 'ftp:"),
            "mon.yaml:10:9: services.reverse_proxy.locations./grafana/.proxy_pass",
        ),
        (("/grafana/:", "grafana/:"), "mon.yaml:9:7: services.reverse_proxy.locations: 'grafana/'"),
        (("port: 9091}", "port: 22}"), "must not listen on the port the fleet deploys through"),
    ],
)
def test_service_modules_reject_bad_settings(
    fleet: Callable[[dict[str, str]], Path],
    cli: Callable[..., Run],
    edit: tuple[str, str],
    message: str,
) -> None:
    root = fleet(SERVICES_FLEET)
    (root / "mon.yaml").write_text((root / "mon.yaml").read_text().replace(*edit))
    r = cli("--fleet", str(root), "compile")
    assert r.code == 1 and message in r.err, r.err
    assert "Traceback" not in r.err
    assert not (root / ".orchestrate/build").exists()


@pytest.mark.containers
def test_every_shipped_role_passes_molecule(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "test", "--jobs", "2"],
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


def test_role_arguments_reach_keys_that_are_not_plain_attributes() -> None:
    from orchestrator.compiler.content import _config_ref

    # `config.x.items` would be the dict method in Jinja, and `a-b` is no attribute name
    assert _config_ref(("services", "x", "items")) == "config.services.x['items']"
    assert _config_ref(("a-b", "port")) == "config['a-b'].port"
