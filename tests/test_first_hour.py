"""What a new user meets in the first hour: a copied fleet never answers from the original's
build, and the version names its checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUNDLED, REPO, Run, orchestrate

FLEET = {
    "fleet.yaml": """
        name: t
        builders: {x86_64: {arch: x86_64}}
        defaults: [m.yaml]
        hosts:
          a: {builder: x86_64}
    """,
    "m.yaml": """
        options:
          motd: {type: string, default: original}
    """,
}


def test_a_copied_fleet_answers_from_its_own_files(
    fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    root = fleet(FLEET)
    assert orchestrate(root, "query", "hosts.a.config.motd").stdout.strip() == '"original"'
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)  # mtimes kept, build too
    (copy / "m.yaml").write_text("options:\n  motd: {type: string, default: edited}\n")
    r = orchestrate(copy, "query", "hosts.a.config.motd")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == "edited"
    (copy / "m.yaml").write_text("options:\n  motd: {type: strin}\n")
    r = orchestrate(copy, "inventory", "--list")
    assert r.returncode == 1 and "m.yaml:2:10" in r.stderr  # fails, never the old build
    assert "did you mean 'string'?" in r.stderr
    assert orchestrate(root, "query", "hosts.a.config.motd").stdout.strip() == '"original"'


def test_query_and_compile_agree_on_the_out_folder(
    fleet: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    root = fleet(FLEET)
    builds = tmp_path / "builds"
    builds.mkdir()
    out = builds / "b"
    assert orchestrate(root, "compile", "-o", str(out)).returncode == 0
    assert os.listdir(builds) == ["b"]  # nothing beside --out
    assert not (root / ".orchestrate" / "build").exists()
    r = orchestrate(root, "query", "hosts.a.config.motd", "-o", str(out))
    assert (r.returncode, r.stdout.strip()) == (0, '"original"'), r.stderr
    assert not (root / ".orchestrate" / "build").exists()  # it read --out's build
    (root / "m.yaml").write_text("options:\n  motd: {type: string, default: edited}\n")
    r = orchestrate(root, "inventory", "--host", "a", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "edited" in r.stdout  # a stale --out build is compiled again, in place
    assert json.loads((out / "manifest.json").read_text())["fleet"]
    assert os.listdir(builds) == ["b"]


@pytest.mark.parametrize(
    "args,hint",
    [
        (["--output", "yaml"], "query --output is now --format (write --format yaml)"),
        (["-o", "lines"], "for the output format write --format lines"),
    ],
)
def test_the_old_query_output_flag_points_to_format(
    fleet: Callable[[dict[str, str]], Path], args: list[str], hint: str
) -> None:
    root = fleet(FLEET)
    r = orchestrate(root, "query", "hosts", *args)
    assert r.returncode == 1 and hint in r.stderr, r.stderr
    assert not (root / "lines").exists() and not (root / ".orchestrate").exists()


def test_a_file_added_to_secrets_makes_the_build_stale(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet({**FLEET, "secrets/notes.yaml": "plain: text\n"})
    (root / "secrets" / "notes.yaml").unlink()
    assert cli("--fleet", str(root), "compile").code == 0
    time.sleep(0.05)  # past the file system's clock tick, as any real edit is
    (root / "secrets" / "more.yaml").write_text("plain: text\n")
    r = cli("--fleet", str(root), "inventory", "--list")
    assert r.code == 1 and "more.yaml:1:1: not SOPS-encrypted" in r.err


def test_version_names_the_checkout_commit() -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    r = orchestrate(BUNDLED, "--version")
    assert r.stdout.strip() == f"orchestrate 0.1.0 (checkout at {head})"
    assert shutil.which("git")


def test_a_mistyped_flag_exits_1_and_help_lists_every_exit_code(tmp_path: Path) -> None:
    for args in (["plan", "--detailed-exitcodes"], ["secrets", "nope"], ["compile", "--out"]):
        r = orchestrate(tmp_path, *args)
        assert r.returncode == 1, (args, r.returncode)  # 2 would read as "plan found changes"
        assert "error:" in r.stderr and "Traceback" not in r.stderr
    text = orchestrate(tmp_path, "--help").stdout
    for code in ("0", "1", "2", "3", "4", "70", "130"):
        assert f"\n  {code} " in text, code


def test_fleet_is_accepted_after_the_subcommand(fleet: Callable[[dict[str, str]], Path]) -> None:
    root = fleet(FLEET)
    for args in (
        ["--fleet", str(root), "query", "length(hosts)"],
        ["query", "length(hosts)", "--fleet", str(root)],
        ["--fleet", "/nonexistent", "query", "length(hosts)", "--fleet", str(root)],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            capture_output=True, text=True, check=False, cwd=REPO,
        )  # fmt: skip
        assert r.returncode == 0 and r.stdout.strip() == "1", (args, r.stderr)


def test_the_readme_fleet_in_one_minute_compiles_as_written(tmp_path: Path) -> None:
    import re

    text = (REPO / "README.md").read_text()
    section = text[text.index("## A fleet in one minute") : text.index("## Commands")]
    files = re.findall(r"```yaml\n# (\S+)\n(.*?)```", section, re.S)
    assert [name for name, _ in files] == ["fleet.yaml", "modules/prometheus.yaml"]
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    query = re.search(r"`orchestrate query\s+('[^']+' --format lines)`", section)
    assert query is not None
    expr = query.group(1).split("'")[1]
    assert orchestrate(tmp_path, "compile").returncode == 0
    r = orchestrate(tmp_path, "query", expr, "--format", "lines")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1108", "9090"]


def test_the_query_help_examples_answer_on_the_bundled_fleet() -> None:
    import re

    text = orchestrate(BUNDLED, "query", "--help").stdout
    examples = re.findall(r"orchestrate query '([^']+)'|\"([^\"]+)\"", " ".join(text.split()))
    exprs = [a or b for a, b in examples]
    assert len(exprs) >= 2
    for expr in exprs:
        r = orchestrate(BUNDLED, "query", expr)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) not in (None, []), expr


def test_every_environment_variable_the_tool_reads_is_documented() -> None:
    import re

    code = "\n".join(p.read_text() for p in (REPO / "orchestrator").rglob("*.py"))
    read = set(
        re.findall(
            r"\b(ORCHESTRATE_[A-Z_]+|SOPS_AGE_KEY_FILE|SOURCE_DATE_EPOCH|XDG_[A-Z_]+)\b", code
        )
    )
    # and any other variable read by name (PATH, which `schedule add` copies into crontab)
    read |= set(re.findall(r"(?:environ\.get\(|environ\[|getenv\()\s*\"([A-Z][A-Z0-9_]*)\"", code))
    documented = (REPO / "docs" / "conventions.md").read_text()
    assert read and not [v for v in sorted(read) if f"`{v}`" not in documented]


def test_an_unknown_option_names_the_module_that_declares_it(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: t
                builders: {x86_64: {arch: x86_64}}
                hosts:
                  a: {builder: x86_64, modules: [web.yaml]}
                  b: {builder: x86_64, modules: [b.yaml]}
            """,
            "web.yaml": "options:\n  web.port: {type: integer, default: 80}\n",
            "b.yaml": "config:\n  services.prometheus.enable: true\n  web.port: 8\n",
        }
    )
    r = cli("--fleet", str(root), "compile")
    assert r.code == 1
    assert (
        "b.yaml:2:3: unknown option services.prometheus.enable "
        "(hint: orchestrate:services/prometheus.yaml declares it" in r.err
    )
    assert re.search(r"b.yaml:3:3: unknown option web.port \(hint: \S*web.yaml declares it", r.err)


def test_one_play_over_every_host(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    import yaml

    root = fleet(FLEET)
    assert cli("--fleet", str(root), "compile").code == 0
    site = yaml.safe_load((root / ".orchestrate" / "build" / "site.yml").read_text())
    # the architectures converge side by side, not one after the other
    assert [play["hosts"] for play in site] == ["all"]


def test_show_renders_a_saved_plan(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run], tmp_path: Path
) -> None:
    root = fleet(FLEET)
    saved = tmp_path / "tonight.plan"
    planned = cli("--fleet", str(root), "plan", "--offline", "-o", str(saved), "--json")
    assert planned.code == 0, planned.err
    shown = cli("show", str(saved), "--json")
    assert shown.code == 0 and json.loads(shown.out) == json.loads(planned.out)
    text = cli("show", str(saved))
    assert text.code == 0 and "~ a" in text.out and "would change" in text.out
    (tmp_path / "other.json").write_text('{"hosts": {}, "inputs": {}}')
    bad = cli("show", str(tmp_path / "other.json"))
    assert bad.code == 1 and "is not a plan saved by" in bad.err


def test_completion_scripts_complete_subcommands_and_flags(tmp_path: Path) -> None:
    script = tmp_path / "orchestrate.bash"
    script.write_text(orchestrate(tmp_path, "completion", "bash").stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
            '_orchestrate; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert complete("orchestrate", "sec") == ["secrets"]
    assert complete("orchestrate", "secrets", "ho") == ["host-key"]
    assert "--detailed-exitcode" in complete("orchestrate", "--fleet", "x", "plan", "--det")
    assert "--hosts" in complete("orchestrate", "testbed", "up", "--")
    zsh = orchestrate(tmp_path, "completion", "zsh").stdout
    assert zsh.startswith("autoload -U +X bashcompinit") and "_orchestrate()" in zsh


# --- messages that lead to the fix

BROKEN = {
    "fleet.yaml": """
        name: m6
        builders:
          x86_64: {arch: x86_64}
        hosts:
          web-2:
            builder: x86_64
            modules: [m.yaml, n.yaml]
            deploy: {host: 10.0.0.2}
          ok-1:
            builder: x86_64
            modules: [n2.yaml]
            deploy: {host: 10.0.0.4}
    """,
    "m.yaml": """
        options:
          port: {$ref: "orchestrate:port", default: 8080
    """,
    "n.yaml": """
        options:
          motd: {type: string, default: hi}
        config:
          port: 9090
          motd: "port ${config.port}"
    """,
    "n2.yaml": """
        options:
          banner: {type: string, default: hi, description: the login banner}
        config:
          banner: !force there
    """,
}


def test_errors_that_follow_from_a_yaml_error_are_not_printed(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = fleet(BROKEN)
    r = orchestrate(root, "compile")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert "m.yaml:3:1: invalid YAML" in lines[0], r.stderr
    assert "unknown option" not in r.stderr and "declares option port" not in r.stderr
    assert lines[-1] == (
        "1 problem(s) found; nothing was written; web-2 not checked further: a module they "
        "import did not load, and what follows from that would only repeat it"
    )
    # fixed, the errors that were held back are reported
    (root / "m.yaml").write_text("options:\n  other: {type: string}\n")
    r = orchestrate(root, "compile")
    assert r.returncode == 1 and "n.yaml:4:3: unknown option port" in r.stderr, r.stderr


def test_options_and_explain_answer_while_the_fleet_has_errors_elsewhere(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = fleet(BROKEN)
    r = orchestrate(root, "options", "banner")
    assert r.returncode == 0, r.stderr
    assert "banner" in r.stdout and "the login banner" in r.stdout
    assert "the fleet has 1 problem(s)" in r.stderr
    r = orchestrate(root, "explain", "ok-1", "banner")
    assert r.returncode == 0 and 'banner on ok-1 = "there"' in r.stdout, r.stderr
    r = orchestrate(root, "explain", "web-2", "motd")
    assert r.returncode == 1 and "web-2 imports a module that did not load: fix that" in r.stderr
    assert "m.yaml:3:1: invalid YAML" in r.stderr


def test_a_when_that_starts_with_a_bang_is_told_to_quote_it(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = fleet(
        {
            **BROKEN,
            "m.yaml": """
                options:
                  port: {$ref: "orchestrate:port", default: 8080}
                config:
                  - when: !config.port
                    set: {port: 9090}
            """,
        }
    )
    r = orchestrate(root, "compile")
    assert r.returncode == 1
    assert "m.yaml:4:11: unknown YAML tag '!config.port'" in r.stderr, r.stderr
    assert 'quote it: "!config.port"' in r.stderr


@pytest.mark.parametrize(
    "expr,hint",
    [
        (
            "values(hosts)[?config.port > 80].name",
            "<query>:1:30: invalid JMESPath expression: invalid token (hint: a number in "
            "JMESPath is written in backticks: `80` (a string: '80'))",
        ),
        (
            "hosts.web-2.name",
            "hint: a name with a dash is written in double quotes: 'hosts.\"web-2\".name'",
        ),
        ("values(hosts)[?config.port > '80']", "a comparison of values of different types"),
    ],
)
def test_jmespath_mistakes_get_hints(
    fleet: Callable[[dict[str, str]], Path], expr: str, hint: str
) -> None:
    root = fleet({**BROKEN, "m.yaml": 'options:\n  port: {$ref: "orchestrate:port"}\n'})
    r = orchestrate(root, "query", expr)
    assert r.returncode == 1 and hint in r.stderr, r.stderr
    assert "internal error" not in r.stderr


def test_a_plain_path_that_answers_null_names_the_missing_key(
    fleet: Callable[[dict[str, str]], Path],
) -> None:
    root = fleet({**BROKEN, "m.yaml": 'options:\n  port: {$ref: "orchestrate:port"}\n'})
    r = orchestrate(root, "query", "hosts.WEB_2.name")
    assert (r.returncode, r.stdout) == (0, "null\n")
    assert "note: hosts has no key 'WEB_2' (did you mean 'web-2'?)" in r.stderr
    r = orchestrate(root, "query", 'hosts."web-2".name')
    assert (r.returncode, r.stdout, r.stderr) == (0, '"web-2"\n', "")


def test_the_testbed_preload_lists_what_the_hosts_roles_install(tmp_path: Path) -> None:
    from orchestrator.compiler.freshness import load_build_data
    from orchestrator.pipeline import fresh_build
    from orchestrator.testbed.packages import preloads

    root = tmp_path / "fleet"
    shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(".orchestrate"))
    out = fresh_build(str(root))
    data = load_build_data(out)
    found = preloads(out, data, sorted(data["hosts"]))
    pi, x86 = found["aarch64"], found["x86_64"]
    pi_all, x86_all = {*pi.packages, *pi.recommending}, {*x86.packages, *x86.recommending}
    # the roles' literal apt names, each only where a host runs the role
    assert {"nftables", "wireguard-tools", "prometheus-node-exporter"} <= pi_all
    assert "nginx-light" in x86_all and "nginx-light" not in pi_all
    assert "prometheus" in x86_all and "prometheus" not in pi_all
    # installed as the tasks install them: nftables with its recommends (netbase's
    # /etc/protocols, which `nft -c` reads), the system packages without
    assert "nftables" in pi.recommending and "nftables" not in pi.packages
    # environment.system_packages after each host's overrides; no templated names
    assert {"git", "curl", "htop"} <= set(pi.packages)
    assert not any("{" in p for p in (*pi_all, *x86_all))
    # components the hosts name: zfsutils-linux comes from contrib
    assert "zfsutils-linux" in x86.packages and "contrib" in x86.components
    assert "main" in pi.components and list(pi.packages) == sorted(pi.packages)
    only_pi = preloads(out, data, ["pi-1"])
    assert set(only_pi) == {"aarch64"} and only_pi["aarch64"].packages == pi.packages
