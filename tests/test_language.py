"""Declare/define tables for the module system (as nixpkgs tests lib/modules.nix): each case is a
small fleet and the value or error it must produce."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Run

from orchestrator.errors import FleetErrors
from orchestrator.evaluator.fleet import evaluate
from orchestrator.loader.fleet import load_fleet

FLEET = """
name: t
channels: {stable: {suite: bookworm}, unstable: {suite: trixie}}
builders:
  x86_64: {arch: x86_64, modules: [builder.yaml]}
  aarch64: {arch: aarch64}
defaults: [decl.yaml]
hosts:
  a: {builder: x86_64, tags: [web], modules: [a.yaml], deploy: {host: 10.0.0.1, port: 1108}}
  b: {builder: aarch64, modules: [b.yaml]}
"""

DECL = """
options:
  list: {type: array, items: {type: string}, default: [d]}
  obj: {type: object, additionalProperties: true, default: {}}
  num: {type: integer, default: 1}
  text: {type: string}
  flag: {type: boolean, default: false}
  svc.enable: {type: boolean, default: false}
  svc.port: {$ref: "orchestrate:port", default: 9090}
"""


def _eval(fleet: Callable[[dict[str, str]], Path], **files: str) -> dict[str, Any]:
    base = {"fleet.yaml": FLEET, "decl.yaml": DECL, "builder.yaml": "", "a.yaml": "", "b.yaml": ""}
    base.update(files)
    ev = evaluate(load_fleet(str(fleet(base))))
    return {name: h.config for name, h in ev.hosts.items()}


def test_option_defaults(fleet) -> None:
    cfg = _eval(fleet)
    assert cfg["a"] == {
        "list": ["d"],
        "obj": {},
        "num": 1,
        "flag": False,
        "svc": {"enable": False, "port": 9090},
    }


def test_arrays_concatenate_in_module_order(fleet) -> None:
    cfg = _eval(
        fleet,
        **{
            "decl.yaml": DECL + "config: {list: [defaults]}\n",
            "builder.yaml": "config: {list: [builder]}\n",
            "a.yaml": "imports: [imp.yaml]\nconfig: {list: [host]}\n",
            "imp.yaml": "config: {list: [imported]}\n",
        },
    )
    assert cfg["a"]["list"] == ["defaults", "builder", "imported", "host"]


def test_priorities_force_default_and_option_default(fleet) -> None:
    cfg = _eval(
        fleet,
        **{
            "a.yaml": "config: {list: !force [forced], num: !default 5}\n",
            "builder.yaml": "config: {list: [plain]}\n",
            "b.yaml": "config: {num: !default 5}\nimports: [n.yaml]\n",
            "n.yaml": "config: {num: 7}\n",
        },
    )
    assert cfg["a"]["list"] == ["forced"]
    assert cfg["a"]["num"] == 5  # !default (1000) beats the option default (1500)
    assert cfg["b"]["num"] == 7  # a plain definition hides every !default


def test_objects_merge_key_by_key(fleet) -> None:
    cfg = _eval(
        fleet,
        **{
            "a.yaml": "config: {obj: {x: 1, deep: {l: [1]}}}\n",
            "builder.yaml": "config: {obj: {y: 2, deep: {l: [2], k: v}}}\n",
        },
    )
    assert cfg["a"]["obj"] == {"x": 1, "y": 2, "deep": {"l": [2, 1], "k": "v"}}


def test_equal_scalars_merge(fleet) -> None:
    cfg = _eval(fleet, **{"a.yaml": "config: {num: 3}\n", "builder.yaml": "config: {num: 3}\n"})
    assert cfg["a"]["num"] == 3


def test_integer_and_boolean_do_not_merge(fleet) -> None:
    with pytest.raises(FleetErrors, match=r"conflicting definitions of obj\.k"):
        _eval(
            fleet,
            **{"a.yaml": "config: {obj: {k: 1}}\n", "builder.yaml": "config: {obj: {k: true}}\n"},
        )


def test_dotted_keys_equal_nested_mappings(fleet) -> None:
    dotted = _eval(fleet, **{"a.yaml": "config:\n  svc.enable: true\n  svc.port: 80\n"})
    nested = _eval(fleet, **{"a.yaml": "config:\n  svc: {enable: true, port: 80}\n"})
    assert dotted["a"] == nested["a"]


def test_nested_option_declarations(fleet) -> None:
    cfg = _eval(fleet, **{"a.yaml": "options:\n  extra:\n    one: {type: integer, default: 1}\n"})
    assert cfg["a"]["extra"] == {"one": 1}
    assert "extra" not in cfg["b"]


def test_when_blocks_are_lazy(fleet) -> None:
    # the false block would fail if evaluated (unknown host), so it must not be
    mod = """
config:
  - when: config.flag
    set: {text: "${hosts.nosuchhost.name}"}
  - when: "!(config.flag)"
    set: {text: disabled}
"""
    cfg = _eval(fleet, **{"a.yaml": mod})
    assert cfg["a"]["text"] == "disabled"


def test_typed_whole_string_and_interpolation(fleet) -> None:
    mod = """
config:
  num: ${host.deploy.port}
  list: ["${host.name}-${host.deploy.port}", "$${literal}"]
  obj: {tags: "${host.tags}", arch: "${host.arch}", none: "x${config.text}y"}
"""
    cfg = _eval(fleet, **{"a.yaml": mod})
    assert cfg["a"]["num"] == 1108
    assert cfg["a"]["list"] == ["a-1108", "${literal}"]
    assert cfg["a"]["obj"] == {"tags": ["web"], "arch": "x86_64", "none": "xy"}


def test_cross_host_reference_and_discovery(fleet) -> None:
    cfg = _eval(
        fleet,
        **{
            "a.yaml": "config:\n  svc.enable: true\n  svc.port: 8080\n",
            "b.yaml": "config:\n  num: ${hosts.a.config.svc.port}\n"
            "  list: ${values(hosts)[?config.svc.enable].deploy.host}\n",
        },
    )
    assert cfg["b"]["num"] == 8080
    assert cfg["b"]["list"] == ["10.0.0.1"]


def test_self_reference_to_other_option_is_not_a_cycle(fleet) -> None:
    cfg = _eval(fleet, **{"a.yaml": "config:\n  svc.port: 81\n  num: ${config.svc.port}\n"})
    assert cfg["a"]["num"] == 81


def test_params_defaults_and_with(fleet) -> None:
    cfg = _eval(
        fleet,
        **{
            "a.yaml": "imports:\n  - use: p.yaml\n    with: {name: web}\n",
            "p.yaml": "params:\n  name: {type: string}\n  port: {type: integer, default: 8000}\n"
            "config:\n  text: ${params.name}\n  num: ${params.port}\n",
        },
    )
    assert cfg["a"]["text"] == "web" and cfg["a"]["num"] == 8000


def test_renamed_option_still_works_with_warning(fleet) -> None:
    base = {
        "fleet.yaml": FLEET,
        "decl.yaml": DECL + "renamed: {old.flag: flag}\n",
        "builder.yaml": "",
        "a.yaml": "config: {old.flag: true}\n",
        "b.yaml": "",
    }
    ev = evaluate(load_fleet(str(fleet(base))))
    assert ev.hosts["a"].config["flag"] is True
    assert any("old.flag is renamed to flag" in w.render() for w in ev.warnings)


def test_warnings_are_reported_not_fatal(fleet) -> None:
    base = {
        "fleet.yaml": FLEET,
        "decl.yaml": DECL,
        "builder.yaml": "",
        "b.yaml": "",
        "a.yaml": "warnings:\n  - when: config.num == `1`\n    message: num is one\n",
    }
    ev = evaluate(load_fleet(str(fleet(base))))
    assert [w.message for w in ev.warnings] == ["host a: num is one"]


def test_unknown_option_path_in_expression(fleet) -> None:
    with pytest.raises(FleetErrors, match=r"no module in the fleet declares option svc\.prot"):
        _eval(fleet, **{"a.yaml": "config:\n  num: ${config.svc.prot}\n"})


def test_fleet_lib_functions(fleet) -> None:
    lib = (
        "from orchestrator.evaluator.expressions import jmespath_function\n\n"
        "@jmespath_function('string')\ndef shout(s):\n    return s.upper()\n"
    )
    files = {
        "lib/f.py": lib,
        "a.yaml": 'config: {text: "${shout(host.name)}"}\n',
        "fleet.yaml": FLEET + "lib: [lib]\n",
    }
    assert _eval(fleet, **files)["a"]["text"] == "A"


def test_the_library_functions_are_loaded_like_a_fleets_own() -> None:
    from orchestrator.evaluator.expressions import load_lib_functions
    from orchestrator.paths import library_functions_dir

    found, problems = load_lib_functions((library_functions_dir(),), "fleet.yaml")
    assert problems == []
    assert {"wg_peers", "scrape_jobs", "scrape_targets"} <= set(found)


def test_a_fleet_function_named_like_a_library_one_is_an_error(fleet) -> None:
    lib = (
        "from orchestrator.evaluator.expressions import jmespath_function\n\n"
        "@jmespath_function('object', 'string')\ndef wg_peers(hosts, name):\n    return []\n"
    )
    files = {"lib/mine.py": lib, "fleet.yaml": FLEET + "lib: [lib]\n"}
    with pytest.raises(FleetErrors, match=r"lib/mine\.py:1:1: library function 'wg_peers' "):
        _eval(fleet, **files)


def test_wg_peers_builtin(fleet) -> None:
    vpn = """
options:
  vpn.enable: {type: boolean, default: true}
  vpn.public_key: {type: string, default: k}
  vpn.listen_port: {type: integer, default: 51820}
  vpn.address: {type: string, default: 10.1.0.1}
  vpn.peers: {type: array, default: []}
config:
  vpn.peers: ${wg_peers(hosts, host.name)}
"""
    cfg = _eval(fleet, **{"decl.yaml": DECL + "imports: [vpn.yaml]\n", "vpn.yaml": vpn})
    assert cfg["a"]["vpn"]["peers"] == [
        {"name": "b", "public_key": "k", "endpoint": "b:51820", "allowed_ips": ["10.1.0.1/32"]}
    ]


def test_explain_names_every_definition(fleet, cli: Callable[..., Run]) -> None:
    root = fleet(
        {
            "fleet.yaml": FLEET,
            "decl.yaml": DECL,
            "b.yaml": "",
            "builder.yaml": "config: {num: 2}\n",
            "a.yaml": "config:\n  - set: {num: !force 3}\n  - when: config.flag\n"
            "    set: {num: 4}\n",
        }
    )
    r = cli("--fleet", str(root), "explain", "a", "num")
    assert r.code == 0, r.err
    assert r.out.startswith("num on a = 3\n")
    assert "a.yaml:2:11  priority 50 (!force)  winner: 3" in r.out
    assert "builder.yaml:1:10  priority 100 (plain)  overridden: 2" in r.out
    assert "inactive: 4  when config.flag" in r.out
    assert "(option default)  priority 1500" in r.out
    assert "best (lowest) priority among active definitions is 50" in r.out
    bad = cli("--fleet", str(root), "explain", "a", "nmu")
    assert bad.code == 1 and "did you mean num" in bad.err


def test_explain_reads_the_evaluation_and_changes_nothing_of_it(fleet) -> None:
    from orchestrator.reporter.explain import explain

    base = {"fleet.yaml": FLEET, "decl.yaml": DECL, "builder.yaml": "", "b.yaml": ""}
    base["a.yaml"] = (
        "config:\n  - set: {num: !default 3}\n  - when: config.flag\n    set: {num: 4}\n"
    )
    ev = evaluate(load_fleet(str(fleet(base))), keep_going=True)
    he = ev.host_eval("a")

    def state() -> tuple[Any, ...]:
        flags = {k: v for k, v in vars(ev.evaluator).items() if isinstance(v, bool | int | str)}
        counts = (len(ev.evaluator.problems), len(ev.evaluator.warnings))
        return flags, counts, {k: id(v) for k, v in he.values.items()}

    before = state()
    x = explain(ev, "a", "num")
    assert x.value == 3 and [r.status for r in x.rows] == ["winner", "inactive", "overridden"]
    assert state() == before


def test_options_command(fleet, cli: Callable[..., Run]) -> None:
    root = fleet(
        {"fleet.yaml": FLEET, "decl.yaml": DECL, "b.yaml": "", "builder.yaml": "", "a.yaml": ""}
    )
    r = cli("--fleet", str(root), "options", "svc", "--json")
    doc = json.loads(r.out)
    assert doc["format"] == "orchestrate.options/1"
    rows = doc["options"]
    assert [row["path"] for row in rows] == ["svc.enable", "svc.port"]
    assert rows[1]["type"] == '$ref "orchestrate:port"' and rows[1]["default"] == 9090
    assert rows[1]["declared"].endswith("decl.yaml:8:3")


def test_existing_role_is_copied_into_build(fleet, cli: Callable[..., Run]) -> None:
    root = fleet(
        {
            "fleet.yaml": FLEET,
            "decl.yaml": DECL,
            "b.yaml": "",
            "builder.yaml": "",
            "a.yaml": "role: webserver\nrole_when: config.svc.enable\n",
            "roles/webserver/tasks/main.yml": "---\n- name: Hi\n  ansible.builtin.ping:\n",
        }
    )
    assert cli("--fleet", str(root), "compile").code == 0
    build = root / ".orchestrate" / "build"
    assert (build / "roles/webserver/tasks/main.yml").exists()
    data = json.loads((build / "fleet.json").read_text())
    assert data["groups"].get("role_webserver", []) == []  # role_when is false
    manifest = json.loads((build / "manifest.json").read_text())
    assert "roles/webserver/tasks/main.yml" in manifest["inputs"]
    (root / "a.yaml").write_text("role: webserver\nconfig: {svc.enable: true}\n")
    assert cli("--fleet", str(root), "compile").code == 0
    data = json.loads((build / "fleet.json").read_text())
    assert data["groups"]["role_webserver"] == ["a"]
