"""What `plan` prints, through the real command line on small fleets: lines are never cut or
wrapped when piped, lists change per element and mappings per key, a role that stops running
on a host is named, a host never applied shows the configuration it would get, and `show`
prints a saved plan exactly as `plan` did. A last apply is recorded through the state API, as
apply records it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import orchestrate

from orchestrator.api import evaluate_fleet
from orchestrator.executor import state
from orchestrator.reporter.valuediff import Line, value_lines

FLEET = """
name: pr
builders: {x86_64: {arch: x86_64}}
defaults: [base.yaml]
hosts:
  a: {builder: x86_64, modules: [a.yaml, web.yaml, monitor.yaml]}
  b: {builder: x86_64}
"""
BASE = """
options:
  base.packages: {type: array, items: {type: string}, default: [git, curl, htop]}
  base.motd: {type: string, default: hello}
  base.extra:
    type: object
    additionalProperties: true
    default: {keep: 1, change: old, drop: gone, nested: {n: 1, same: [1]}}
tasks: []
"""
WEB = """
options:
  web.enable: {type: boolean, default: true}
role: nginx
role_when: config.web.enable
"""
MONITOR = "role: monitor\n"  # a role and no options: stopping it changes no option
ROLES = {"roles/nginx/tasks/main.yml": "[]\n", "roles/monitor/tasks/main.yml": "[]\n"}


def _fleet(make: Callable[[dict[str, str]], Path], a: str = "{}\n") -> Path:
    files = {"fleet.yaml": FLEET, "base.yaml": BASE, "web.yaml": WEB, "monitor.yaml": MONITOR}
    return make({**files, **ROLES, "a.yaml": f"config: {a}"})


def _applied(root: Path, *hosts: str) -> None:
    """Record a successful apply of the fleet as it is now, as `apply` records one."""
    ev = evaluate_fleet(str(root))
    for h in hosts:
        roles = [r.name for r in ev.hosts[h].roles]
        state.save_host_state(str(root), h, ev.hosts[h].config, roles, "run-1", {})


def _plan(root: Path, *args: str) -> str:
    r = orchestrate(root, "plan", "--offline", *args)
    assert r.returncode in (0, 2), r.stderr
    return r.stdout


def _block(out: str, host: str) -> list[str]:
    """The lines of one host, its header first."""
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if re.match(rf"[~=] {host}  ", x))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines)
    )
    return lines[start:end]


def test_piped_plan_keeps_long_values_and_long_paths_whole(
    fleet: Callable[[dict[str, str]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what a pipe gets by default; no line may follow it
    long = "v" * 120 + " " + "w" * 130  # a space, where a wrapping renderer would break
    name = "option_with_a_name_long_enough_to_push_the_line_past_eighty_columns"
    root = _fleet(fleet)
    (root / "long.yaml").write_text(f"options:\n  deep.{name}: {{type: string, default: x}}\n")
    (root / "fleet.yaml").write_text(FLEET.replace("[base.yaml]", "[base.yaml, long.yaml]"))
    fresh = _plan(root)  # never applied: the whole configuration
    assert f'    + deep.{name}: "x"' in fresh.splitlines()
    _applied(root, "a", "b")
    (root / "b.yaml").write_text(f"config:\n  deep.{name}: '{long}'\n  base.motd: '{long}'\n")
    (root / "fleet.yaml").write_text(
        FLEET.replace("[base.yaml]", "[base.yaml, long.yaml]").replace(
            "b: {builder: x86_64}", "b: {builder: x86_64, modules: [b.yaml]}"
        )
    )
    out = _plan(root)
    lines = out.splitlines()
    assert f'    ~ deep.{name}: "x" -> "{long}"' in lines
    assert f'    ~ base.motd: "hello" -> "{long}"' in lines
    assert not [x for x in lines if x.rstrip().endswith(("…", "..."))]
    assert "\x1b" not in out  # no colour codes into a pipe


def test_a_terminal_wraps_lines_itself_and_values_are_never_cut(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    import fcntl
    import termios

    root = _fleet(fleet, "{base.motd: '" + "m" * 230 + "'}\n")
    controller, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "80"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), "plan", "--offline"],
        stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    os.close(child)
    raw = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        try:
            chunk = os.read(controller, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        raw += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode())
    assert "base.motd: " in text  # it is a terminal: colours came, and were stripped
    assert b"\x1b[" in raw
    assert '+ base.motd: "' + "m" * 230 + '"' in text  # one piece: the terminal wraps it


@pytest.mark.ansible
def test_what_plan_says_on_stderr_is_not_wrapped_either(
    fleet: Callable[[dict[str, str]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    root = _fleet(fleet)
    (root / ".orchestrate").mkdir()
    closed = {"address": "127.0.0.1", "port": 1, "user": "root", "arch": "x86_64"}
    record = {"container": "none", "private_key": "/nonexistent", **closed}
    (root / ".orchestrate" / "testbed.json").write_text(json.dumps({"hosts": {"b": record}}))
    r = orchestrate(root, "plan", "--limit", "b")  # check mode, against a port nobody answers
    assert r.returncode == 3, r.stdout + r.stderr
    line = "testbed: reaching 1 host(s) through .orchestrate/testbed.json instead of their deploy"
    assert line + " addresses" in r.stderr.splitlines()
    assert "    unreachable: check mode could not run" in r.stdout.splitlines()


def test_lists_change_per_element_and_mappings_per_key(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = _fleet(fleet)
    _applied(root, "a", "b")
    (root / "a.yaml").write_text(
        "config:\n"
        "  base.packages: !force [git, htop, vim]\n"
        "  base.extra: !force {keep: 1, change: new, add: here, nested: {n: 2, same: [1]}}\n"
    )
    out = _plan(root)
    assert _block(out, "a") == [
        "~ a  roles: base, nginx, monitor",
        '    + base.extra.add: "here"',
        '    ~ base.extra.change: "old" -> "new"',
        '    - base.extra.drop: "gone"',
        "    ~ base.extra.nested.n: 1 -> 2",
        "    ~ base.packages:",
        '        - "curl"',
        '        + "vim"',
    ]
    assert _block(out, "b") == ["= b  roles: base"]
    assert out.splitlines()[-1] == "1 of 2 host(s) would change (offline: hosts not contacted)"


def test_a_role_that_stops_running_is_named_in_text_and_json(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = _fleet(fleet)
    _applied(root, "a", "b")
    (root / "fleet.yaml").write_text(FLEET.replace(", monitor.yaml]", "]"))
    (root / "a.yaml").write_text("config: {web.enable: false}\n")
    r = orchestrate(root, "plan", "--offline", "--detailed-exitcode")
    assert r.returncode == 2, r.stderr
    assert _block(r.stdout, "a") == [
        "~ a  roles: base",
        "    ~ web.enable: true -> false",
        "    role nginx stops running on this host: what it configured stays on the host",
        "    role monitor stops running on this host: what it configured stays on the host",
    ]
    plan = json.loads(orchestrate(root, "plan", "--offline", "--json").stdout)
    assert plan["format"] == "orchestrate.plan/2"
    assert plan["hosts"]["a"]["stopped_roles"] == ["nginx", "monitor"]
    assert plan["hosts"]["b"]["stopped_roles"] == []
    # a role stopping alone, with no option changed, is still a change
    (root / "a.yaml").write_text("config: {}\n")
    r = orchestrate(root, "plan", "--offline", "--detailed-exitcode", "--json")
    assert r.returncode == 2
    host = json.loads(r.stdout)["hosts"]["a"]
    assert host["config_changes"] == [] and host["stopped_roles"] == ["monitor"]


def test_a_host_never_applied_shows_the_configuration_it_would_get(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = _fleet(fleet, "{base.motd: 'for a'}\n")
    _applied(root, "b")
    out = _plan(root)
    assert _block(out, "a") == [
        "~ a  roles: base, nginx, monitor",
        "    never applied: every option is new, and roles base, nginx, monitor would run for "
        "the first time",
        '    + base.extra: {"change": "old", "drop": "gone", "keep": 1, "nested": '
        '{"n": 1, "same": [1]}}',
        '    + base.motd: "for a"',
        '    + base.packages: ["git", "curl", "htop"]',
        "    + web.enable: true",
    ]
    assert _block(out, "b") == ["= b  roles: base"]
    host = json.loads(orchestrate(root, "plan", "--offline", "--json").stdout)["hosts"]["a"]
    assert host["first_apply"] and host["config_changes"] == []
    assert {c["path"]: c["value"] for c in host["configuration"]} == {
        "base.extra": {"change": "old", "drop": "gone", "keep": 1, "nested": {"n": 1, "same": [1]}},
        "base.motd": "for a",
        "base.packages": ["git", "curl", "htop"],
        "web.enable": True,
    }


def test_show_prints_a_saved_plan_as_plan_printed_it(
    fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    root = _fleet(fleet)
    _applied(root, "a")  # b never applied
    (root / "fleet.yaml").write_text(FLEET.replace(", monitor.yaml]", "]"))
    (root / "a.yaml").write_text("config: {base.packages: !force [vim], web.enable: false}\n")
    saved = tmp_path / "p.plan"
    printed = _plan(root, "-o", str(saved))
    assert "role monitor stops running" in printed and '        + "vim"' in printed
    assert "never applied" in printed
    shown = orchestrate(root, "show", str(saved))
    assert shown.returncode == 0 and shown.stdout == printed
    # a plan saved before format 2 (no configuration, no stopped roles) still shows
    old = json.loads(saved.read_text())
    del old["format"]
    for h in old["hosts"].values():
        del h["configuration"], h["stopped_roles"]
    saved.write_text(json.dumps(old))
    shown = orchestrate(root, "show", str(saved))
    assert shown.returncode == 0, shown.stderr
    assert "role monitor stops running" not in shown.stdout and "~ a  roles:" in shown.stdout
    for marker, code in (("orchestrate.plan/9", 1), (True, 1), ("orchestrate.plan/1", 0)):
        saved.write_text(json.dumps({**old, "format": marker}))
        assert orchestrate(root, "show", str(saved)).returncode == code, marker
    old["hosts"]["a"]["config_changes"][0].pop("new")  # hand-edited: refused, not a traceback
    saved.write_text(json.dumps(old))
    bad = orchestrate(root, "show", str(saved))
    assert bad.returncode == 1 and "is not a plan saved by" in bad.stderr, bad.stderr


def test_fleet_values_are_printed_escaped_and_literal(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = _fleet(fleet)
    _applied(root, "a")
    motd = '"[bold red]x[/] :smile: \\e[2J\\u202e\\n"'  # markup, an emoji code, escapes
    (root / "a.yaml").write_text(f"config:\n  base.motd: {motd}\n")
    out = _plan(root)
    assert '    ~ base.motd: "hello" -> "[bold red]x[/] :smile: \\u001b[2J\\u202e\\n"' in out
    assert "\x1b" not in out and "\u202e" not in out


@pytest.mark.parametrize(
    ("old", "new", "lines"),
    [
        (1, 2, [Line("~", "p: 1 -> 2")]),
        (None, [1], [Line("+", "p: [1]")]),
        ({"a": 1}, None, [Line("-", 'p: {"a": 1}')]),
        ([1, 2], [2, 1], [Line("~", "p: (the same elements, in another order)"),
                          Line("+", "2", 1), Line("-", "2", 1)]),
        ({"k.x": [1]}, {"k.x": []}, [Line("~", 'p."k.x":'), Line("-", "1", 1)]),
        ("s", ["s"], [Line("~", 'p: "s" -> ["s"]')]),
        ([{"a": 1}], [{"a": 2}], [Line("~", "p:"), Line("-", '{"a": 1}', 1),
                                  Line("+", '{"a": 2}', 1)]),
    ],
)  # fmt: skip
def test_value_lines(old: object, new: object, lines: list[Line]) -> None:
    assert value_lines("p", old, new) == lines


def test_mappings_deeper_than_the_limit_change_as_whole_values() -> None:
    deep: dict[str, object] = {"v": 1}
    for _ in range(8):
        deep = {"k": deep}
    other = json.loads(json.dumps(deep).replace('"v": 1', '"v": 2'))
    (only,) = value_lines("p", deep, other)
    assert only.mark == "~" and only.text.startswith("p.k.k.k.k.k.k: {") and "->" in only.text
