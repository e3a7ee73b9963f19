"""Fleet input is data: hostile and careless files get `path:line:col: message`, exit 1, no
traceback and nothing written; no file outside the fleet is read or echoed; no value is
turned into another; no input hangs or exhausts the evaluator."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Run, orchestrate, snapshot
from test_errors import FLEET  # hosts a and b; a imports hosts/a.yaml

BASE = """
options:
  port: {$ref: "orchestrate:port", default: 80}
  name: {type: string}
  num: {type: number}
  tags: {type: array, items: {type: string}, default: []}
  free: {type: object, additionalProperties: true, default: {}}
"""


def _files(**overrides: str) -> dict[str, str]:
    files = {"fleet.yaml": FLEET, "modules/base.yaml": BASE, "hosts/a.yaml": "config: {}\n"}
    files.update(overrides)
    return files


def _fails(root: Path, cli: Callable[..., Run], pattern: str, *args: str) -> Run:
    before = snapshot(root)
    started = time.monotonic()
    r = cli("--fleet", str(root), *(args or ("compile",)))
    assert time.monotonic() - started < 20, "took too long"
    assert r.code == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert re.search(pattern, r.err), r.err
    for line in r.err.strip().splitlines()[:-1]:
        assert re.match(r"^\S+:\d+:\d+: ", line), f"not path:line:col: {line!r}"
    assert snapshot(root) == before, "something was written"
    return r


def _a(config: str) -> dict[str, str]:
    return _files(**{"hosts/a.yaml": config})


CASES = {
    # YAML values that are not JSON data
    "binary": (_a("config:\n  name: !!binary aGVsbG8=\n"), r"a.yaml:2:9: binary values"),
    "bool": (_a("config:\n  name: !!bool maybe\n"), r"a.yaml:2:9: \"maybe\" is not a boolean"),
    "int": (_a("config:\n  port: !!int abc\n"), r"a.yaml:2:9: \"abc\" is not a valid int"),
    "float": (_a("config:\n  num: !!float abc\n"), r"a.yaml:2:8: \"abc\" is not a valid float"),
    "bigint": (_a("config:\n  num: 123456789012345678901234567890\n"), r"a.yaml:2:8: .*64 bits"),
    "digits": (_a("config:\n  num: " + "9" * 5000 + "\n"), r"a.yaml:2:8: .*4960 more.*64 bits"),
    "inf": (_a("config:\n  num: .inf\n"), r"a.yaml:2:8: \".inf\" is not a JSON number"),
    "nan": (_a("config:\n  num: .NaN\n"), r"a.yaml:2:8: \".NaN\" is not a JSON number"),
    "set": (_a("config:\n  free: !!set {a: null}\n"), r"a.yaml:2:9: sets"),
    # option and parameter schemas
    "type-port": (
        _a("options:\n  x: {type: port}\n"),
        r'a.yaml:2:7: options.x.type: "port" is not one of .*use \$ref: "orchestrate:port"',
    ),
    "type-bool": (_a("options:\n  x: {type: bool}\n"), r"a.yaml:2:7: .*write type: boolean"),
    "param-int": (
        _a("params:\n  p: {type: int}\n"),
        r"a.yaml:2:7: params.p.type: .*write type: integer",
    ),
    "ref-nowhere": (
        _a("options:\n  x: {$ref: '#/nope'}\nconfig: {x: 1}\n"),
        r"a.yaml:2:3: .*points to nothing",
    ),
    "ref-url": (
        _a("options:\n  x: {$ref: 'http://example.com/s.json'}\n"),
        r"a.yaml:2:\d+: options.x.\$ref: 'http://example.com/s.json' does not match",
    ),
    "pattern": (_a("options:\n  x: {type: string, pattern: '(['}\n"), r"a.yaml:2:3: .*pattern"),
    "keyword": (_a("options:\n  x: {type: string, minLength: abc}\n"), r"at minLength"),
    "default": (_a("options:\n  x: {type: integer, default: abc}\n"), r"a.yaml:2:3: x: expected"),
    # option paths and priorities
    "empty-seg": (_a("options:\n  a..b: {type: string}\n"), r"a.yaml:2:3: .*empty segment"),
    "empty-def": (_a("config:\n  free..x: 1\n"), r"a.yaml:2:3: .*empty segment"),
    "odd-name": (_a('options:\n  "x{{y}}": {type: string}\n'), r"a.yaml:2:3: .*not a name"),
    "renamed": (_a("renamed: {'a..b': c}\n"), r"a.yaml:1:11: .*empty segment"),
    "force-task": (
        _a("tasks:\n  - ansible.builtin.debug: {msg: !force hi}\n"),
        r"a.yaml:2:34: !default and !force only mark definitions",
    ),
    "force-fleet": (
        _files(fleet=FLEET.replace("  b: {builder: x86_64}", "  b: !force {builder: x86_64}")),
        r"fleet.yaml:7:6: !default and !force",
    ),
    # expressions and functions
    "deep-value": (
        _a("config:\n  name: '${" + "[" * 3000 + "]" * 3000 + "}'\n"),
        r"a.yaml:2:3: name: the value is nested deeper",
    ),
    "big-literal": (_a("config:\n  num: ${`1e400`}\n"), r"a.yaml:2:3: num: the value holds inf"),
    "bigint-literal": (
        _a("config:\n  num: ${`123456789012345678901234567890`}\n"),
        r"a.yaml:2:3: num: the value holds an integer beyond 64 bits",
    ),
    "wg-odd": (
        _a("config:\n  tags: '${wg_peers(`{\"x\": 1}`, ''a'')}'\n"),
        r"a.yaml:2:3: tags: wg_peers\(\): host \"x\" is a number",
    ),
    "scrape-odd": (
        _a("config:\n  tags: '${scrape_targets(`{\"x\": {\"config\": 3}}`, ''n'')}'\n"),
        r"a.yaml:2:3: tags: scrape_targets\(\): config is a number",
    ),
    "jobs-odd": (
        _a('config:\n  tags: \'${scrape_jobs(`{"x": {"config": {"services": 3}}}`)}\'\n'),
        r"a.yaml:2:3: tags: scrape_jobs\(\): services is a number",
    ),
    "secret-climb": (
        _a("config:\n  name: ${secret('../../etc/passwd')}\n"),
        r"a.yaml:2:3: name: secret\(\"../../etc/passwd\"\): not a secret name",
    ),
    "secret-abs": (_a("config:\n  name: ${secret('/etc/x')}\n"), r"a.yaml:2:3: .*not a secret"),
    "with-expr": (
        _files(
            **{
                "hosts/a.yaml": "imports:\n  - use: ../p.yaml\n    with: {q: '${hosts.zz.x}'}\n",
                "p.yaml": "params:\n  q: {type: string}\n",
            }
        ),
        r"a.yaml:2:5: reference to unknown host 'zz'",
    ),
    "with-expr-role": (  # found by the fuzzing test: a role's parameters failing to bind
        _files(
            **{
                "hosts/a.yaml": "imports:\n  - use: ../p.yaml\n    with: {q: '${config.nosuch}'}\n",
                "p.yaml": "params:\n  q: {type: string}\ntasks: []\n",
            }
        ),
        r"a.yaml:2:5: no module in the fleet declares option nosuch",
    ),
    # names
    "newline-host": (
        _files(fleet=FLEET.replace("  b: {builder: x86_64}", '  "b\\n": {builder: x86_64}')),
        r"fleet.yaml:7:3: hosts: 'b\\n' does not match",
    ),
    "host-all": (
        _files(fleet=FLEET.replace("  b: {builder: x86_64}", "  all: {builder: x86_64}")),
        r"fleet.yaml:7:3: 'all' is a name Ansible keeps",
    ),
    "host-localhost": (
        _files(fleet=FLEET.replace("  b: {builder: x86_64}", "  localhost: {builder: x86_64}")),
        r"'localhost' is a name Ansible keeps",
    ),
    "tag-newline": (
        _files(
            fleet=FLEET.replace("  b: {builder: x86_64}", '  b: {builder: x86_64, tags: ["x\\n"]}')
        ),
        r"fleet.yaml:7:\d+: .*does not match",
    ),
    "host-group": (
        _files(fleet=FLEET.replace("  b: {builder: x86_64}", "  arch_x86_64: {builder: x86_64}")),
        r"fleet.yaml:7:3: host 'arch_x86_64' has the name of a group",
    ),
    "role-newline": (_a('role: "web\\n"\n'), r"a.yaml:1:1: role: 'web\\n' does not match"),
    "template-up": (
        _a("tasks: []\ntemplates:\n  ../tasks/main.yml: x\n"),
        r"a.yaml:3:3: templates: '../tasks/main.yml' does not match",
    ),
    "template-abs": (_a("tasks: []\ntemplates:\n  /etc/x: y\n"), r"a.yaml:3:3: templates"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_located_error(
    name: str, fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    files, pattern = CASES[name]
    files = dict(files)
    if "fleet" in files:
        files["fleet.yaml"] = files.pop("fleet")
    _fails(fleet(files), cli, pattern)


def test_catastrophic_pattern_is_bounded(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    value = "a" * 60 + "!"
    root = fleet(
        _a(f"options:\n  x: {{type: string, pattern: '^(a|aa)+$'}}\nconfig: {{x: {value}}}\n")
    )
    r = _fails(root, cli, r"a.yaml:3:10: x: matching '\^\(a\|aa\)\+\$' .* took too long")
    assert value not in r.err  # an excerpt, not the value


def test_ecma_anchors_reject_a_trailing_newline(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        _a("options:\n  x: {type: string, pattern: '^[a-z]+$'}\nconfig: {x: \"web\\n\"}\n")
    )
    _fails(root, cli, r"a.yaml:3:10: x: 'web\\n' does not match")


def test_keys_are_kept_as_written(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    hosts = "  true: {builder: x86_64}\n  0x1F: {builder: x86_64}\n  'null': {builder: x86_64}\n"
    root = fleet(
        _files(
            **{
                "fleet.yaml": FLEET.replace("  b: {builder: x86_64}\n", hosts),
                "hosts/a.yaml": "config:\n  free: {yes: 1, 0o17: 2, null: 3, 1.0: 4, ~: 5}\n",
            }
        )
    )
    r = cli("--fleet", str(root), "compile")
    assert r.code == 0, r.err
    build = root / ".orchestrate" / "build"
    names = sorted(p.name for p in (build / "inventory" / "host_vars").iterdir())
    assert names == ["0x1F.json", "a.json", "null.json", "true.json"]
    data = json.loads((build / "fleet.json").read_text())
    assert data["hosts"]["a"]["config"]["free"] == {
        "yes": 1,
        "0o17": 2,
        "null": 3,
        "1.0": 4,
        "~": 5,
    }


def test_a_chain_of_ten_thousand_cross_host_reads_evaluates(tmp_path: Path) -> None:
    n = 10_000
    root = tmp_path / "chain"
    (root / "hosts").mkdir(parents=True)
    hosts = "".join(f"  h{i}: {{builder: x86_64, modules: [hosts/h{i}.yaml]}}\n" for i in range(n))
    (root / "fleet.yaml").write_text(
        "name: t\nbuilders:\n  x86_64: {arch: x86_64}\ndefaults: [m.yaml]\nhosts:\n" + hosts
    )
    (root / "m.yaml").write_text("options:\n  v: {type: integer}\n")
    (root / "hosts" / "h0.yaml").write_text("config: {v: 7}\n")
    for i in range(1, n):
        (root / "hosts" / f"h{i}.yaml").write_text(
            f"config: {{v: '${{hosts.h{i - 1}.config.v}}'}}\n"
        )
    r = orchestrate(root, "query", f"hosts.h{n - 1}.config.v", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "7"


def test_references_deeper_than_the_evaluator_follows_are_a_located_error(
    fleet: Callable[[dict[str, str]], Path],
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.evaluator import deep

    monkeypatch.setattr(deep, "RECURSION_LIMIT", 3000)
    n = 2000
    options = "".join(f"  o{i}: {{type: integer}}\n" for i in range(n))
    config = "".join(f"  o{i}: '${{config.o{i + 1}}}'\n" for i in range(n - 1)) + f"  o{n - 1}: 5\n"
    root = fleet(_a("options:\n" + options + "config:\n" + config))
    _fails(root, cli, r"a.yaml:\d+:3: references nest deeper than evaluation can follow")


SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE SECRETSECRET\n-----END-----\n"


def test_files_outside_the_fleet_are_never_read_or_echoed(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(SECRET)
    root = fleet(_a(f"imports: [{key}]\n"))
    r = _fails(root, cli, r"a.yaml:1:11: .*is outside the fleet folder")
    assert "SECRETSECRET" not in r.err
    (root / "modules" / "key.yaml").symlink_to(key)
    (root / "hosts" / "a.yaml").write_text("imports: [../modules/key.yaml]\n")
    r = _fails(root, cli, r"a.yaml:1:11: .*is outside the fleet folder \(or names a link")
    assert "SECRETSECRET" not in r.err
    (root / "fleet.yaml").write_text(FLEET + f"lib: [{tmp_path}]\n")
    _fails(root, cli, r"fleet.yaml:9:7: .*is outside the fleet folder")


def test_module_paths_name_extra_module_folders(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "motd.yaml").write_text("options:\n  motd: {type: string, default: hi}\n")
    root = fleet(_a(f"imports: [{shared / 'motd.yaml'}]\n"))
    _fails(root, cli, r"outside the fleet folder")
    (root / "fleet.yaml").write_text(FLEET + f"module_paths: [{shared}]\n")
    r = cli("--fleet", str(root), "query", "hosts.a.config.motd")
    assert r.code == 0, r.err
    assert json.loads(r.out) == "hi"


def test_fifos_devices_and_links_out_are_refused_without_hanging(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(_a("imports: [../modules/fifo.yaml]\n"))
    os.mkfifo(root / "modules" / "fifo.yaml")
    _fails(root, cli, r"fifo.yaml:1:1: cannot read file: not a regular file \(a FIFO")
    (root / "modules" / "zero.yaml").symlink_to("/dev/zero")
    (root / "hosts" / "a.yaml").write_text("imports: [../modules/zero.yaml]\n")
    _fails(root, cli, r"a.yaml:1:11: .*outside the fleet folder")


def test_role_files_are_regular_files_inside_the_role(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    root = fleet(_a("role: web\n"))
    tasks = root / "roles" / "web" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text("- ansible.builtin.ping:\n")
    (tmp_path / "outside.txt").write_text(SECRET)
    (tasks / "extra.yml").symlink_to(tmp_path / "outside.txt")
    r = _fails(root, cli, r"roles/web/tasks/extra.yml:1:1: links out of its role")
    assert "SECRETSECRET" not in r.err
    (tasks / "extra.yml").unlink()
    os.mkfifo(tasks / "pipe.yml")
    _fails(root, cli, r"roles/web/tasks/pipe.yml:1:1: cannot copy: not a regular file")


def test_messages_show_escaped_excerpts(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    long = "x" * 5000
    root = fleet(_a(f'config:\n  port: "\\e[31mRED\\e[0m"\n  num: "{long}"\n'))
    r = _fails(root, cli, r"a.yaml:2:3: port: expected integer, got string")
    assert "\x1b" not in r.err and "\\u001b[31mRED" in r.err
    assert long not in r.err and "more characters" in r.err


def test_corrupt_state_is_an_error_not_no_changes(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(_files())
    state = root / ".orchestrate" / "state"
    state.mkdir(parents=True)
    (state / "a.json").write_text('{"host": "a", "config": {"port"')
    r = cli("--fleet", str(root), "plan", "--offline")
    assert r.code == 1, r.err
    assert "a.json is corrupt (not valid JSON); remove it" in r.err
    (state / "a.json").write_text('{"host": "a"}')
    r = cli("--fleet", str(root), "plan", "--offline")
    assert r.code == 1 and "it records no configuration" in r.err
    (state / "a.json").write_text("[]")
    r = cli("--fleet", str(root), "plan", "--offline")
    assert r.code == 1 and "not a JSON object" in r.err
    (root / ".orchestrate" / "testbed.json").write_text('{"hosts": {"a": {"nope": 1}}}')
    (state / "a.json").unlink()
    r = cli("--fleet", str(root), "testbed", "status")
    assert r.code == 1 and "testbed.json is corrupt" in r.err


def test_key_files_the_user_names_are_refused_unless_regular(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    root = fleet(_files())
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    r = cli("--fleet", str(root), "secrets", "keygen", "--key-file", str(fifo))
    assert r.code == 1 and "is a FIFO" in r.err, r.err
    r = cli("--fleet", str(root), "secrets", "host-key", "a", "--import", str(fifo))
    assert r.code == 1 and "cannot read it (not a regular file" in r.err, r.err
    pasted = tmp_path / "pasted"
    pasted.write_text("AGE-SECRET-KEY-1NOTAKEYSECRETSECRET\n")
    r = cli("--fleet", str(root), "secrets", "host-key", "a", "--import", str(pasted))
    assert r.code == 1 and "no age identity in it" in r.err
    assert "SECRETSECRET" not in r.err
    assert not (root / "secrets").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("query", "(" * 3000 + "hosts" + ")" * 3000), "nested too deeply"),
        (("plan", "--offline", "--limit", "arch:sparc"), "unknown architecture 'sparc'"),
        (("plan", "--offline", "--forks", "0"), "--forks must be at least 1"),
        (("apply", "--serial", "{{ x }}", "--yes"), "--serial '{{ x }}': give a number"),
        (("apply", "--max-fail-percent", "300", "--yes"), "a percentage, 0 to 100"),
    ],
)
def test_bad_command_line_values_are_usage_errors(
    args: tuple[str, ...],
    message: str,
    fleet: Callable[[dict[str, str]], Path],
    cli: Callable[..., Run],
) -> None:
    root = fleet(_files())
    r = cli("--fleet", str(root), *args)
    assert r.code == 1, r.err
    assert message in r.err and "Traceback" not in r.err
    assert not (root / ".orchestrate" / "runs").exists()
