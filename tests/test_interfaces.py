"""The command line's promises to scripts and to people reading --help: every reporting command's
--json document is marked with its shape, has the keys docs/conventions.md lists for it, and
failures are documents too; every (sub)command's help ends with examples that parse and name
the bundled fleet's real hosts, and with the exit codes it can return."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, REPO, Run, orchestrate

from orchestrator.cli import _parser
from orchestrator.reporter.helptext import EXIT_CODES, HELP, children
from orchestrator.reporter.shapes import SHAPES

FLEET = {
    "fleet.yaml": """
        name: shapes
        builders: {x86_64: {arch: x86_64}}
        defaults: [m.yaml]
        deploy: {port: 9}
        hosts:
          a: {builder: x86_64, deploy: {host: 127.0.0.1}}
          b: {builder: x86_64, deploy: {host: 127.0.0.1}, modules: [b.yaml]}
        images:
          disk: {hosts: [a], format: raw}
    """,
    "m.yaml": """
        options:
          motd: {type: string, default: original, description: the login banner}
          port: {type: integer, default: 80}
        tasks:
          - name: Ping
            ansible.builtin.ping:
    """,
    "b.yaml": """
        config:
          motd: from b
    """,
}

# ----------------------------------------------------------------------------- the documents


def documented_keys() -> dict[str, set[str]]:
    """kind -> the top-level keys docs/conventions.md lists for it (besides `format`)."""
    text = (REPO / "docs" / "conventions.md").read_text()
    section = text[text.index("## JSON output") :]
    section = section[: section.index("\n## ", 1)]
    out: dict[str, set[str]] = {}
    for block in re.split(r"\n### ", section)[1:]:
        head = re.match(r"`orchestrate\.([a-z-]+)/(\d+)`", block)
        assert head, block[:80]
        assert int(head.group(2)) == SHAPES[head.group(1)], head.group(0)
        out[head.group(1)] = set(re.findall(r"^\| `([a-z_]+)` \|", block, re.M))
    return out


def check(kind: str, out: str, *, optional: set[str] | None = None) -> dict[str, Any]:
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert next(iter(doc)) == "format", "format comes first"
    assert doc["format"] == f"orchestrate.{kind}/{SHAPES[kind]}"
    keys = set(doc) - {"format"}
    listed = documented_keys()[kind]
    assert keys <= listed, f"{kind}: undocumented keys {keys - listed}"
    missing = listed - keys - (optional or set())
    assert not missing, f"{kind}: documented keys missing: {missing}"
    return doc


PROBLEM_KEYS = {"file", "line", "column", "message", "hint", "hosts"}


def test_every_shape_is_documented() -> None:
    assert set(documented_keys()) == set(SHAPES)


@pytest.fixture
def clean_crontab() -> Iterator[None]:
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    yield
    saved = before.stdout if before.returncode == 0 else ""
    subprocess.run(["crontab", "-"], input=saved, text=True, check=True)


def test_each_json_command_prints_its_documented_shape(
    fleet: Callable[[dict[str, str]], Path],
    cli: Callable[..., Run],
    tmp_path: Path,
    clean_crontab: None,
) -> None:
    root = fleet(FLEET)

    def run(*args: str, code: int = 0) -> str:
        r = cli("--fleet", str(root), *args)
        assert r.code == code, (args, r.code, r.err)
        return r.out

    doc = check("compile", run("compile", "--json"))
    assert (doc["hosts"], doc["roles"], doc["warnings"]) == (2, 1, [])
    doc = check("explain", run("explain", "b", "motd", "--json"))
    assert doc["value"] == "from b"
    assert [d["status"] for d in doc["definitions"]] == ["winner", "overridden"]
    first = doc["definitions"][0]
    assert first["file"].endswith("b.yaml") and (first["line"], first["column"]) == (2, 3)
    assert doc["definitions"][1]["priority_name"] == "option default"
    doc = check("options", run("options", "--json"))
    assert [o["path"] for o in doc["options"]] == ["motd", "port"]
    assert doc["options"][0]["description"] == "the login banner"
    check("options", run("options", "--library", "--json"))

    saved = tmp_path / "offline.plan"
    planned = run("plan", "--offline", "-o", str(saved), "--json")
    doc = check("plan", planned)
    assert doc["offline"] is True and set(doc["hosts"]) == {"a", "b"}
    assert json.loads(run("show", str(saved), "--json")) == doc
    assert json.loads(saved.read_text())["format"] == "orchestrate.plan/2"  # saved as printed

    # nothing listens on 127.0.0.1:9: both hosts are unreachable, the summary says so
    applied = orchestrate(root, "apply", "--yes", "--json")
    assert applied.returncode == 3, applied.stderr
    doc = check("apply", applied.stdout)
    assert doc["failed_hosts"] == ["a", "b"] and doc["interrupted"] is False
    assert doc["hosts"]["a"]["unreachable"] == 1 and doc["hosts"]["a"]["success"] is False
    assert {f["host"] for f in doc["failures"]} == {"a", "b"}
    assert all(f["status"] == "unreachable" for f in doc["failures"])
    assert Path(doc["run_dir"]).is_dir() and doc["run_id"] in doc["run_dir"]
    assert "failed or unreachable: a, b" in applied.stderr  # stderr still says it

    doc = check("secrets-check", run("secrets", "check", "--json"))
    assert doc["ok"] is True and doc["problems"] == []
    (root / "secrets").mkdir()
    (root / "secrets" / "notes.yaml").write_text("api_key: plain\n")
    doc = check("secrets-check", run("secrets", "check", "--json", code=1))
    assert doc["ok"] is False and doc["files"] == 1
    (problem,) = doc["problems"]
    assert set(problem) == PROBLEM_KEYS
    assert problem["file"].endswith("secrets/notes.yaml") and problem["line"] == 1
    assert problem["message"].startswith("not SOPS-encrypted")
    (root / "secrets" / "notes.yaml").unlink()

    doc = check("testbed-status", run("testbed", "status", "--json"))
    assert doc["hosts"] == {}

    doc = check("image-list", run("image", "list", "--json", "--out", str(tmp_path / "img")))
    assert [(i["image"], i["host"], i["sha256"]) for i in doc["images"]] == [("disk", "a", None)]

    assert check("schedule-list", run("schedule", "list", "--json"))["schedules"] == []
    run("schedule", "add", "drift", "--cron", "*/20 * * * *", "--", "plan", "--offline")
    record = run("schedule", "run", "drift", code=2)
    assert record.count("\n") == 1  # one line, as cron appends it to the log
    doc = check("schedule-run", record, optional={"skipped", "error"})  # it ran
    assert doc["drift"] is True and sorted(doc["changed"]) == ["a", "b"]
    (listed,) = check("schedule-list", run("schedule", "list", "--json"))["schedules"]
    assert listed["name"] == "drift" and listed["installed"] is True
    assert listed["args"] == ["--offline"] and listed["last"]["exit"] == 2
    assert listed["spec"]["mode"] == "plan" and listed["spec"]["offline"] is True
    # a schedule recorded before the parsed run was kept: its flags are read again
    defs_path = root / ".orchestrate" / "schedules.json"
    defs = json.loads(defs_path.read_text())
    del defs["drift"]["spec"]
    defs_path.write_text(json.dumps(defs))
    doc = check(
        "schedule-run", run("schedule", "run", "drift", code=2), optional={"skipped", "error"}
    )
    assert doc["drift"] is True and doc["mode"] == "plan"
    run("schedule", "remove", "drift")


def test_a_failing_json_command_prints_the_errors_as_a_document(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    files = dict(FLEET)
    files["b.yaml"] = 'config:\n  motd: 3\n  "nope\\e[2J": 1\n  port: "x"\n'
    root = fleet(files)
    before = sorted(p.name for p in root.iterdir())
    text = cli("--fleet", str(root), "compile")
    r = cli("--fleet", str(root), "compile", "--json")
    assert r.code == text.code == 1 and r.err == ""
    doc = check("errors", r.out)
    assert doc["exit_code"] == 1
    assert all(set(e) == PROBLEM_KEYS for e in doc["errors"])
    where = {(Path(e["file"]).name, e["line"], e["column"]) for e in doc["errors"]}
    assert where == {("b.yaml", 2, 3), ("b.yaml", 3, 3), ("b.yaml", 4, 3)}
    for e in doc["errors"]:  # as escaped as the text says it
        assert not re.search(r"[\x00-\x1f\x7f]", e["message"]), e
        assert e["message"] in text.err
    assert any("\\x1b[2J" in e["message"] for e in doc["errors"])
    assert sorted(p.name for p in root.iterdir()) == before  # nothing was written

    # an error in no file, and a usage error of the library, keep their exit codes
    r = cli("--fleet", str(root / "missing"), "explain", "a", "motd", "--json")
    assert r.code == 1
    (e,) = check("errors", r.out)["errors"]
    assert e["file"] is None and e["line"] is None and e["message"]
    (root / ".orchestrate").mkdir(exist_ok=True)
    (root / ".orchestrate" / "testbed.json").write_text('{"hosts": {"a": {"nope": 1}}}')
    r = cli("--fleet", str(root), "testbed", "status", "--json")
    assert r.code == 1
    assert "testbed.json is corrupt" in check("errors", r.out)["errors"][0]["message"]


def test_an_assertion_names_the_hosts_it_failed_on(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    files = dict(FLEET)
    files["m.yaml"] = files["m.yaml"].rstrip() + (
        "\n        assertions: [{assert: 'config.port > `100`', message: port too low}]\n"
    )
    root = fleet(files)
    r = cli("--fleet", str(root), "compile", "--json")
    assert r.code == 1, r.err
    (e,) = check("errors", r.out)["errors"]
    assert e["hosts"] == ["a", "b"] and "port too low" in e["message"]


def test_the_lock_held_exit_code_is_in_the_document(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    from orchestrator.executor.lock import FleetLock

    root = fleet(FLEET)
    with FleetLock(str(root / ".orchestrate"), "apply"):
        r = cli("--fleet", str(root), "plan", "--offline", "--json")
    assert r.code == 4
    doc = check("errors", r.out)
    assert doc["exit_code"] == 4 and "another run holds" in doc["errors"][0]["message"]


# ---------------------------------------------------------------------------------- --help


def parsers() -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    def walk(
        p: argparse.ArgumentParser, path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
        yield path, p
        for name, child in children(p).items():
            yield from walk(child, (*path, name))

    yield from walk(_parser(), ())


def help_examples(text: str) -> list[str]:
    block = re.search(r"\nexamples?:\n((?:  .*\n)+)", text)
    assert block, text[-400:]
    return [line.strip() for line in block.group(1).splitlines()]


def test_every_help_ends_with_examples_and_its_exit_codes() -> None:
    seen = []
    for path, p in parsers():
        seen.append(path)
        text = p.format_help()
        name = " ".join(("orchestrate", *path))
        examples = help_examples(text)
        assert examples and all(e for e in examples), name
        tail = text[text.index("\nexit codes:\n") :]
        assert text.index("\nexample") < text.index("\nexit codes:\n"), name
        codes = re.findall(r"^  (\d+) +\S", tail, re.M)
        assert tail.strip().splitlines()[1:] and len(codes) == len(tail.strip().splitlines()) - 1
        assert {"0", "1", "70", "130"} <= set(codes), name
        assert set(map(int, codes)) <= set(EXIT_CODES), name
        assert codes == sorted(codes, key=int), name
        if path and path[0] == "plan":
            assert "2" in codes and "3" in codes and "4" in codes
        if path in (("apply",), ("testbed", "status"), ("test",)):
            assert "3" in codes, name
    assert set(seen) == set(HELP)  # no entry for a command that is gone
    assert ("secrets", "check") in seen and ("completion",) in seen


def test_the_docs_list_the_exit_codes_of_the_table() -> None:
    """docs/conventions.md's table and README.md's line name exactly the codes of
    orchestrator/exitcodes.py, which --help shows (above)."""
    conventions = (REPO / "docs" / "conventions.md").read_text()
    section = conventions.split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert rows == set(EXIT_CODES)
    readme = (REPO / "README.md").read_text()
    line = re.search(r"^Exit codes: (.*?)\.$", readme, re.M | re.S)
    assert line, "README.md lists the exit codes in a line that starts 'Exit codes: '"
    named = {int(code) for code in re.findall(r"(?:^|,\s)(\d+)\s", line.group(1))}
    assert named == set(EXIT_CODES)


def example_commands() -> Iterator[tuple[str, list[str]]]:
    """Every `orchestrate ...` command line in every help example, as words."""
    for _path, p in parsers():
        for line in help_examples(p.format_help()):
            line = re.sub(r"\s+#.*$", "", line)
            for part in line.split("&&"):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]  # EDITOR=nano orchestrate ...
                if not words or words[0] != "orchestrate":
                    continue
                for redirect in (">", ">>"):
                    if redirect in words:
                        words = words[: words.index(redirect)]
                yield line, words[1:]


def test_help_examples_are_real_command_lines_for_the_bundled_fleet() -> None:
    from orchestrator.api import fleet_data
    from orchestrator.selection import select

    data = fleet_data(str(BUNDLED))
    hosts = set(data["hosts"])
    images = set(data["images"])
    count = 0
    for line, words in example_commands():
        count += 1
        tail: list[str] = []
        if "--" in words:
            cut = words.index("--")
            words, tail = words[:cut], words[cut + 1 :]
        found = [_parser().parse_args(words)]  # a mistyped flag exits here
        if tail:  # schedule add ... -- plan|apply ARGS
            found.append(_parser().parse_args(tail))
        for args in found:
            for sel in (getattr(args, "limit", None), getattr(args, "hosts", None)):
                if sel:
                    assert select(data, sel), line  # a selection that selects nothing fails
            if getattr(args, "host", None):
                assert args.host in hosts, line
            if args.run.__name__.startswith("_image"):
                for name in getattr(args, "names", None) or [getattr(args, "name", None)]:
                    assert name is None or name in images, line
            if getattr(args, "from_image", None):
                assert args.from_image in images, line
    assert count > 40


@pytest.mark.parametrize(
    "command", ["explain", "options", "query", "inventory", "secrets check", "image list"]
)
def test_read_only_help_examples_run_on_the_bundled_fleet(
    command: str, cli: Callable[..., Run]
) -> None:
    ran = 0
    for line, words in example_commands():
        if " ".join(words).startswith(command) or (
            words[:2] == ["--fleet", "inventory"] and " ".join(words[2:]).startswith(command)
        ):
            r = cli(*words, cwd=BUNDLED if words[0] != "--fleet" else BUNDLED.parent)
            assert r.code == 0, (line, r.err)
            assert (r.out + r.err).strip(), line
            ran += 1
    assert ran, command
