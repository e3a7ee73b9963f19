"""`orchestrate query` over {hosts, images, groups, fleet}, in every output format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from conftest import BUNDLED, Run


def test_query_json_default(cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(BUNDLED), "query", "values(hosts)[?arch=='aarch64'].name | sort(@)")
    assert r.code == 0, r.err
    assert json.loads(r.out) == ["pi-1", "pi-2"]


def test_query_lines_and_yaml(cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(BUNDLED), "query", "groups.tag_core", "--format", "lines")
    assert r.out.splitlines() == ["cortex-alpha", "data-storage"]
    r = cli("--fleet", str(BUNDLED), "query", 'images."pi-cards"', "--format", "yaml")
    assert yaml.safe_load(r.out) == {
        "name": "pi-cards",
        "hosts": ["pi-1", "pi-2"],
        "format": "sd",
        "arch": ["aarch64"],
    }


def test_query_reads_cross_host_values(cli: Callable[..., Run]) -> None:
    r = cli(
        "--fleet",
        str(BUNDLED),
        "query",
        'hosts."cortex-alpha".config.services.reverse_proxy.locations."/prometheus/"',
    )
    assert json.loads(r.out) == {"proxy_pass": "http://10.88.127.3:8080"}
    r = cli(
        "--fleet",
        str(BUNDLED),
        "query",
        "hosts.\"data-storage\".config.services.prometheus.scrape_configs[?job_name=='nvidia_gpu']"
        ".targets[]",
    )
    assert json.loads(r.out) == ["10.88.127.88:9835"]


def test_query_syntax_error_is_precise(cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(BUNDLED), "query", "hosts.[")
    assert r.code == 1
    assert r.err.startswith("error: <query>:1:")
    assert "Traceback" not in r.err


def test_query_sees_edits_without_explicit_compile(fleet, cli: Callable[..., Run]) -> None:
    root = fleet(
        {"fleet.yaml": "name: t\nbuilders: {x: {arch: x86_64}}\nhosts:\n  a: {builder: x}\n"}
    )
    assert json.loads(cli("--fleet", str(root), "query", "keys(hosts)").out) == ["a"]
    (root / "fleet.yaml").write_text(
        "name: t\nbuilders: {x: {arch: x86_64}}\nhosts:\n  a: {builder: x}\n  b: {builder: x}\n"
    )
    assert json.loads(cli("--fleet", str(root), "query", "keys(hosts)").out) == ["a", "b"]


def test_group_names_are_ansible_safe(fleet, cli: Callable[..., Run]) -> None:
    root = fleet(
        {
            "fleet.yaml": "name: t\nbuilders: {arm-boards: {arch: aarch64}}\nhosts:\n"
            "  a: {builder: arm-boards, tags: [rack-1]}\n"
        }
    )
    groups = json.loads(cli("--fleet", str(root), "query", "keys(groups)").out)
    assert "tag_rack_1" in groups and "builder_arm_boards" in groups
    assert not any("-" in g for g in groups)


def test_stamps_of_builds_that_are_gone_are_removed(
    cli: Callable[..., Run], fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    """One freshness stamp per build folder; a compile removes those whose build is gone."""
    import shutil

    root = fleet(
        {
            "fleet.yaml": "name: s\nbuilders:\n  x86_64: {arch: x86_64}\n"
            "hosts:\n  a: {builder: x86_64, modules: [a.yaml]}\n",
            "a.yaml": "config: {}\n",
        }
    )
    stamps = root / ".orchestrate/stamps"
    for name in ("one", "two"):
        assert cli("--fleet", str(root), "compile", "-o", str(tmp_path / name)).code == 0
    assert len(list(stamps.glob("*.json"))) == 2
    shutil.rmtree(tmp_path / "one")
    (stamps / "junk.json").write_text("not a stamp")
    assert cli("--fleet", str(root), "compile", "-o", str(tmp_path / "two")).code == 0
    left = list(stamps.glob("*.json"))
    assert len(left) == 1 and str(tmp_path / "two") in left[0].read_text()
