"""Every bad input named by the design gives `path:line:col: message`, exit 1, no traceback,
and leaves the fleet folder (and any earlier build) untouched."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Run, snapshot

FLEET = """
name: t
builders:
  x86_64: {arch: x86_64}
defaults: [modules/base.yaml]
hosts:
  a: {builder: x86_64, modules: [hosts/a.yaml]}
  b: {builder: x86_64}
"""

BASE = """
options:
  port: {$ref: "orchestrate:port", default: 80}
  name: {type: string}
  tags: {type: array, items: {type: string}, default: []}
  services.web.enable: {type: boolean, default: false}
config:
  name: ${host.name}
"""


def _files(**overrides: str) -> dict[str, str]:
    files = {"fleet.yaml": FLEET, "modules/base.yaml": BASE, "hosts/a.yaml": "config: {}\n"}
    files.update(overrides)
    return files


def _fails(
    fleet: Callable[[dict[str, str]], Path],
    cli: Callable[..., Run],
    files: dict[str, str],
    pattern: str,
) -> Run:
    root = fleet(files)
    before = snapshot(root)
    r = cli("--fleet", str(root), "compile")
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    assert re.search(pattern, r.err), r.err
    for line in r.err.strip().splitlines()[:-1]:
        assert re.match(r"^\S+:\d+:\d+: ", line), f"not path:line:col: {line!r}"
    assert snapshot(root) == before, "something was written"
    return r


def test_malformed_yaml(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "config:\n  port: [1, 2\n  name: x\n"}),
        r"hosts/a.yaml:3:\d+: invalid YAML",
    )


def test_unknown_key_in_fleet_yaml(fleet, cli) -> None:
    r = _fails(
        fleet,
        cli,
        _files(**{"fleet.yaml": FLEET + "hostz: {}\n"}),
        r"fleet.yaml:8:1: unknown key 'hostz'",
    )
    assert "did you mean 'hosts'" in r.err


def test_unknown_option_did_you_mean(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "config:\n  services.web.enabel: true\n"}),
        r"hosts/a.yaml:2:3: unknown option services.web.enabel"
        r".*did you mean services.web.enable",
    )


def test_wrong_type_names_expected(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "config:\n  port: eighty\n"}),
        r"hosts/a.yaml:2:3: port: expected integer, got string \"eighty\"",
    )


def test_schema_constraint(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "config:\n  port: 70000\n"}),
        r"hosts/a.yaml:2:3: port: 70000 is greater than the maximum of 65535",
    )


def test_conflicting_values_name_both_places(fleet, cli) -> None:
    files = _files(
        **{
            "hosts/a.yaml": "imports: [x.yaml]\nconfig:\n  port: 81\n",
            "hosts/x.yaml": "config:\n  port: 82\n",
        }
    )
    r = _fails(fleet, cli, files, r"conflicting definitions of port at priority 100")
    assert re.search(r"82 at \S*hosts/x.yaml:2:3", r.err)
    assert re.search(r"81 at \S*hosts/a.yaml:3:3", r.err)


def test_reference_cycle_prints_chain(fleet, cli) -> None:
    base = BASE.replace(
        "config:\n  name: ${host.name}\n",
        """config:
  - set: {name: "${host.name}"}
  - when: host.name == 'a'
    set: {name: "${hosts.b.config.name}"}
  - when: host.name == 'b'
    set: {name: "${hosts.a.config.name}"}
""",
    ).replace("default: 80}", "default: 80}\n  peer: {type: string}")
    r = _fails(fleet, cli, _files(**{"modules/base.yaml": base}), r"reference cycle: ")
    assert re.search(
        r"a:name \(\S+base.yaml:10:11\) -> b:name \(\S+base.yaml:12:11\) "
        r"-> a:name",
        r.err,
    ), r.err


def test_missing_import(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "imports: [nothere.yaml]\n"}),
        r"hosts/a.yaml:1:11: module not found: \S*hosts/nothere.yaml",
    )


def test_import_cycle(fleet, cli) -> None:
    files = _files(
        **{
            "hosts/a.yaml": "imports: [x.yaml]\n",
            "hosts/x.yaml": "imports: [y.yaml]\n",
            "hosts/y.yaml": "imports: [x.yaml]\n",
        }
    )
    _fails(fleet, cli, files, r"hosts/y.yaml:1:11: import cycle: \S*hosts/x.yaml -> \S*y.yaml")


def test_missing_and_unknown_parameter(fleet, cli) -> None:
    param_mod = "params:\n  fqdn: {type: string}\nconfig: {}\n"
    files = _files(
        **{
            "hosts/a.yaml": "imports:\n  - use: p.yaml\n    with: {fqdm: x}\n",
            "hosts/p.yaml": param_mod,
        }
    )
    r = _fails(fleet, cli, files, r"hosts/a.yaml:3:12: unknown parameter 'fqdm'")
    assert "did you mean 'fqdn'" in r.err
    assert re.search(r"hosts/a.yaml:2:5: missing parameter 'fqdn'", r.err)


def test_wrong_parameter_type(fleet, cli) -> None:
    files = _files(
        **{
            "hosts/a.yaml": "imports:\n  - use: p.yaml\n    with: {n: many}\n",
            "hosts/p.yaml": "params:\n  n: {type: integer}\n",
        }
    )
    _fails(fleet, cli, files, r"hosts/a.yaml:3:12: module \S+: parameter n: expected integer")


def test_failing_assertion_shows_message(fleet, cli) -> None:
    files = _files(
        **{
            "hosts/a.yaml": "config:\n  port: 22\nassertions:\n"
            "  - assert: config.port != `22`\n    message: not on the SSH port\n"
        }
    )
    _fails(fleet, cli, files, r"hosts/a.yaml:4:5: assertion failed on a: not on the SSH port")


def test_jmespath_syntax_error(fleet, cli) -> None:
    files = _files(**{"hosts/a.yaml": "config:\n  - when: config.port ==\n    set: {port: 1}\n"})
    _fails(fleet, cli, files, r"hosts/a.yaml:2:5: invalid expression 'config.port =='")


def test_reference_to_unknown_host(fleet, cli) -> None:
    files = _files(**{"hosts/a.yaml": "config:\n  port: ${hosts.bb.config.port}\n"})
    r = _fails(fleet, cli, files, r"hosts/a.yaml:2:3: port: reference to unknown host 'bb'")
    assert "did you mean 'b'" in r.err


def test_unknown_builder(fleet, cli) -> None:
    files = _files(**{"fleet.yaml": FLEET.replace("b: {builder: x86_64}", "b: {builder: arm}")})
    _fails(fleet, cli, files, r"fleet.yaml:7:\d+: host 'b': unknown builder 'arm'")


def test_undeclared_channel(fleet, cli) -> None:
    files = _files(
        **{
            "fleet.yaml": FLEET.replace(
                "b: {builder: x86_64}", "b: {builder: x86_64, channel: unstable}"
            )
        }
    )
    _fails(fleet, cli, files, r"fleet.yaml:7:\d+: undeclared channel 'unstable'")


def test_duplicate_declaration_names_both_files(fleet, cli) -> None:
    files = _files(**{"hosts/a.yaml": "options:\n  port: {type: integer}\n"})
    _fails(fleet, cli, files, r"option port is declared twice \(first at \S+base.yaml:2:3\)")


def test_option_inside_option(fleet, cli) -> None:
    files = _files(**{"hosts/a.yaml": "options:\n  port.x: {type: integer}\n"})
    _fails(fleet, cli, files, r"option port.x is declared inside option port")


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n"
            for i in range(9)
        ),
        "config: " + "[" * 10000 + "]" * 10000 + "\n",
    ],
)
def test_alias_bomb_and_deep_nesting_rejected_quickly(fleet, cli, text: str) -> None:
    start = time.perf_counter()
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": text}),
        r"hosts/a.yaml:\d+:\d+: (document expands to more than|nesting deeper than)",
    )
    assert time.perf_counter() - start < 2


def test_all_problems_reported_at_once(fleet, cli) -> None:
    files = _files(**{"hosts/a.yaml": "config:\n  port: x\n  tags: [1]\n  nope: 1\n"})
    r = _fails(fleet, cli, files, r"unknown option nope")
    assert re.search(r"hosts/a.yaml:2:3: port: expected integer", r.err)
    assert re.search(r"hosts/a.yaml:3:10: tags.0: expected string", r.err)


def test_failed_compile_keeps_previous_build(fleet, cli) -> None:
    root = fleet(_files())
    assert cli("--fleet", str(root), "compile").code == 0
    build = root / ".orchestrate" / "build"
    before = snapshot(build)
    (root / "hosts/a.yaml").write_text("config:\n  port: x\n")
    assert cli("--fleet", str(root), "compile").code == 1
    assert snapshot(build) == before


def test_no_fleet_found(cli, tmp_path: Path) -> None:
    r = cli("compile", cwd=tmp_path)
    assert r.code == 1 and "no fleet.yaml" in r.err


def test_unknown_role_name(fleet, cli) -> None:
    _fails(
        fleet,
        cli,
        _files(**{"hosts/a.yaml": "role: nosuchrole\n"}),
        r"hosts/a.yaml:1:1: role 'nosuchrole' not found",
    )
