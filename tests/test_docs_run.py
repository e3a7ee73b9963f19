"""Docs that run: every command and every example file in README.md and docs/*.md, as written.

What is taken from the pages:

- fenced ``sh``/``bash``/``console``/``shell`` blocks, and untagged blocks holding an
  ``orchestrate ...`` line: each logical command (a line, with its ``\\`` continuations, a
  ``for ... done`` loop as one) after a ``$ `` prompt is stripped;
- inline code that is a whole command line: it starts with ``orchestrate`` (or chains one with
  ``&&``), or is a ``python3 -m pytest``/``python3 -m orchestrator...`` line, and holds no
  placeholder (``HOST``, ``[--json]``, ``a|b``). A placeholder makes it a synopsis: its
  subcommands, flags and choices are checked against the real parser instead. So is inline code
  that starts with a subcommand (``plan --detailed-exitcode``);
- ``yaml`` blocks: a first line ``# PATH`` is a whole file; ``# part of fleet.yaml`` or
  ``# part of a module`` is a fragment, compiled wrapped in the bundled fleet; ``# outline of a
  module`` lists a module's keys; anything else fails the test. The other blocks (JSON, Python,
  sample output) each have a check of their own below, and a block none of them knows fails.

Each command runs verbatim through ``bash -c`` with the real CLI (``orchestrate`` on PATH is a
wrapper around ``python3 -m orchestrator.cli`` of this checkout), in a temporary copy: of the
fleet the section's own example files make, else of the bundled fleet (``inventory/``). The
commands of one block run in order in one shell session (``cd`` and ``export`` carry over); it
starts in the copy's parent folder when the block names ``inventory`` as a folder, else in the
fleet. Exit codes are 0 unless :data:`EXPECT` says otherwise, and where a page states what a
command prints, that is checked too.

Commands that cannot run here (containers, podman, built images, cron, root, the network, the
suite itself) are in :data:`E2E` with the reason and the test that runs the same command for
real; they are parsed with the real parser and the hosts, images and selections they name must
exist. A command that is neither run nor in the table fails, and so does a table entry that no
page has any more."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BUNDLED, REPO

from orchestrator.cli import _parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "console", "shell"}

# ------------------------------------------------------------------------------------ tables

# A documented command (normalised: comments and prompts gone, whitespace collapsed) that cannot
# run in the fast lane -> (why, what runs the same command for real: tests/FILE.py::TEST, a
# test file, or a script that holds the command verbatim; several joined by "; "). The tests'
# source (with the fixtures and helpers of their file that they use) must run the command's
# subcommands, so a renamed or deleted test fails here too.
E2E: dict[str, tuple[str, str]] = {
    # README.md: install and the whole suite
    "python3 -m venv ~/.local/share/orchestrate-venv && "
    "~/.local/share/orchestrate-venv/bin/pip install -q . && "
    "~/.local/share/orchestrate-venv/bin/orchestrate --fleet inventory compile": (
        "installs a wheel into a venv in the home folder (pip, minutes)",
        "tests/test_install.py::test_a_wheel_in_a_fresh_venv_compiles_the_bundled_fleet_as_a_checkout_does",
    ),
    "pipx install . && orchestrate --fleet inventory compile": (
        "installs the tool for this user with pipx",
        "tests/test_install.py::test_a_wheel_in_a_fresh_venv_compiles_the_bundled_fleet_as_a_checkout_does",
    ),
    "bash .ci/deps.sh && ruff check . && ruff format --check . && mypy && orchestrate --fleet "
    'inventory secrets check && python3 -m pytest -q -m "not e2e and not slow" && python3 -m '
    'pytest -q -m "e2e and not slow"': (
        "installs Debian packages as root, then lints and runs the whole suite",
        ".ci/run; "
        "tests/test_secrets.py::test_committed_plaintext_fails_the_bundled_check_as_ci_runs_it",
    ),
    'python3 -m pytest -q -m "not e2e and not slow"': (
        "the fast lane itself, which this test is part of",
        "the fast lane",
    ),
    'python3 -m pytest -q -m "e2e and not slow"': (
        "the e2e lane: container hosts, images, molecule, cron, the wheel",
        "the e2e lane",
    ),
    "python3 -m pytest -m slow": (
        "emulated image builds and boots, over five minutes each",
        "the slow lane",
    ),
    "python3 -m pytest tests/test_images.py": ("builds images as root", "tests/test_images.py"),
    "python3 -m orchestrator.compiler.rolespecs --write": (
        "rewrites docs/options.md and the roles' argument specs in the checkout",
        "tests/test_library.py::test_generated_role_interfaces_and_options_doc_are_in_sync",
    ),
    # README.md / docs: container hosts
    "orchestrate testbed up": (
        "starts podman containers (root; the first run builds their images)",
        "tests/test_bundled_e2e.py::test_testbed_has_both_architectures",
    ),
    "orchestrate plan": (
        "check mode over SSH on the fleet's hosts",
        "tests/test_deploy_e2e.py::test_plan_changes_nothing_on_hosts",
    ),
    "orchestrate apply --yes": (
        "converges the hosts over SSH",
        "tests/test_bundled_e2e.py::test_bundled_fleet_converges_then_changes_nothing",
    ),
    # docs/rollout.md: generations, rollback, trials on hosts
    "orchestrate generations cortex-alpha": (
        "asks the host over SSH",
        "tests/test_rollout_e2e.py::test_rollback_restores_content_owner_and_mode_and_removes_created_files",
    ),
    "orchestrate generations cortex-alpha --json": (
        "asks the host over SSH",
        "tests/test_rollout_e2e.py::test_rollback_restores_content_owner_and_mode_and_removes_created_files",
    ),
    "orchestrate rollback --limit cortex-alpha": (
        "restores files on the host over SSH",
        "tests/test_rollout_e2e.py::test_a_tampered_generation_record_is_refused",
    ),
    "orchestrate rollback --limit cortex-alpha --to 3": (
        "restores files on the host over SSH",
        "tests/test_rollout_e2e.py::test_rollback_restores_content_owner_and_mode_and_removes_created_files",
    ),
    "orchestrate rollback --limit @tag_board --json": (
        "restores files on the hosts over SSH",
        "tests/test_rollout_e2e.py::test_a_tampered_generation_record_is_refused",
    ),
    "orchestrate apply --limit cortex-alpha --trial 10m": (
        "converges the host over SSH, and it reverts by itself",
        "tests/test_rollout_e2e.py::test_a_trial_reverts_without_confirm_and_stays_with_it",
    ),
    "orchestrate confirm --limit cortex-alpha": (
        "confirms the host's trial over SSH",
        "tests/test_rollout_e2e.py::test_a_trial_reverts_without_confirm_and_stays_with_it",
    ),
    "edge=$(orchestrate testbed status | awk '$1 == \"cortex-alpha\" {print $2}')": (
        "reads the running testbed",
        "tests/test_bundled_e2e.py::test_testbed_has_both_architectures",
    ),
    'podman exec "$edge" python3 -c "import urllib.request as u; '
    "print(u.urlopen(u.Request('http://127.0.0.1/prometheus/api/v1/targets', "
    "headers={'Host': 'example.com'})).read()[:300])\"": (
        "asks the converged edge container's proxy",
        "tests/test_bundled_e2e.py::test_prometheus_discovers_exactly_the_exporter_hosts",
    ),
    "orchestrate schedule add drift --cron '*/30 * * * *' -- plan --detailed-exitcode": (
        "installs a crontab entry; the scheduled plan contacts the hosts",
        "tests/test_deploy_e2e.py::test_scheduled_apply",
    ),
    "python3 -m pytest tests/test_golden.py --update-golden": (
        "rewrites tests/golden/ in the checkout; the test compares against it on every run",
        "tests/test_golden.py::test_the_bundled_fleet_compiles_to_its_golden_files",
    ),
    "orchestrate test": (
        "runs every shipped role's molecule scenario in podman containers",
        "tests/test_library.py::test_every_shipped_role_passes_molecule",
    ),
    "orchestrate testbed down": (
        "removes the testbed's containers",
        "tests/test_bundled_e2e.py::test_testbed_has_both_architectures",
    ),
    # README.md / docs/images.md: images (the e2e tests build terminal-zero's entry desk-vm)
    "orchestrate image build": (
        "builds images as root (debootstrap, minutes)",
        "tests/test_images.py::test_qcow2_layout_uefi_boot_and_root_label",
    ),
    "orchestrate image build data-storage-vm": (
        "builds a qcow2 as root (debootstrap, minutes)",
        "tests/test_images.py::test_qcow2_layout_uefi_boot_and_root_label",
    ),
    "orchestrate image boot data-storage-vm": (
        "boots a built image under qemu (software emulation)",
        "tests/test_images.py::test_the_vm_image_boots_under_uefi_to_sshd_on_the_deploy_port",
    ),
    "orchestrate image build pi-cards --limit pi-1": (
        "builds an aarch64 SD card under emulation (over five minutes)",
        "tests/test_images.py::test_sd_card_has_the_firmware_partition_and_the_boards_root",
    ),
    "orchestrate testbed up --from-image pi-cards": (
        "boots built images' root filesystems as podman containers",
        "tests/test_images.py::test_first_plan_against_a_machine_made_from_the_image_shows_no_change",
    ),
    "orchestrate plan --limit pi-1,pi-2": (
        "check mode over SSH on machines made from the images",
        "tests/test_images.py::test_first_plan_against_a_machine_made_from_the_image_shows_no_change",
    ),
}


@dataclass(frozen=True)
class Expect:
    code: int = 0
    lines: tuple[str, ...] | None = None  # stdout, line by line
    out: tuple[str, ...] = ()  # substrings of stdout
    err: tuple[str, ...] = ()  # substrings of stderr


# What the pages say a command prints, or an exit code other than 0 (normalised command -> what
# it must do). Inline commands followed by "prints `A` and `B`" are checked without an entry.
EXPECT: dict[str, Expect] = {
    "orchestrate query \"values(hosts)[?arch=='aarch64'].name\" --format lines": Expect(
        lines=("pi-1", "pi-2")
    ),
    "orchestrate explain data-storage services.prometheus.port": Expect(
        out=("services.prometheus.port on data-storage = 8080", "why:")
    ),
    "orchestrate options services.prometheus.exporters.node": Expect(
        out=("services.prometheus.exporters.node.port",)
    ),
    "orchestrate query 'hosts.\"data-storage\".config.services.prometheus.scrape_configs'": Expect(
        out=('"job_name": "node"',)
    ),
    "orchestrate image list": Expect(  # entry, host, arch, format, file, built or not
        lines=(
            "data-storage-vm\tdata-storage\tx86_64\tqcow2\tdata-storage-vm/data-storage.qcow2"
            "\tnot built",
            "pi-cards\tpi-1\taarch64\tsd\tpi-cards/pi-1.img\tnot built",
            "pi-cards\tpi-2\taarch64\tsd\tpi-cards/pi-2.img\tnot built",
        )
    ),
    "orchestrate secrets check": Expect(
        err=("secrets OK: 1 encrypted file(s), 1 admin(s), 3 host key(s)",)
    ),
    "orchestrate secrets edit wireguard": Expect(err=("secrets/wireguard.yaml: saved",)),
    "orchestrate secrets rekey": Expect(err=("2 file(s) re-encrypted",)),
    "orchestrate inventory --list": Expect(out=('"_meta"', '"tag_core"')),
    "orchestrate options --library": Expect(out=("services.reverse_proxy.locations",)),
}

# ------------------------------------------------------------------------------- the pages


@dataclass(frozen=True)
class Block:
    page: str  # relative to the checkout
    line: int
    lang: str
    text: str
    section: str  # the `## ` heading it is under ("" before the first)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text.strip() else ""


@dataclass(frozen=True)
class Span:
    """Inline code, whitespace collapsed, with the prose that follows it."""

    page: str
    line: int
    text: str
    section: str
    after: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


FENCE = re.compile(r"^([ \t]*)```([\w-]*)[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)


def _sections(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)]


def _section_at(heads: list[tuple[int, str]], pos: int) -> str:
    name = ""
    for start, head in heads:
        if start > pos:
            break
        name = head
    return name


@cache
def blocks() -> tuple[Block, ...]:
    out = []
    for page in PAGES:
        text = page.read_text()
        heads = _sections(text)
        for m in FENCE.finditer(text):
            body = textwrap.dedent(m.group(3))
            line = text.count("\n", 0, m.start()) + 1
            rel = str(page.relative_to(REPO))
            out.append(Block(rel, line, m.group(2), body, _section_at(heads, m.start())))
    return tuple(out)


@cache
def spans() -> tuple[Span, ...]:
    out = []
    for page in PAGES:
        text = page.read_text()
        heads = _sections(text)
        prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # keep offsets
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
            code = " ".join(m.group(1).replace("\\|", "|").split())
            line = text.count("\n", 0, m.start()) + 1
            rel = str(page.relative_to(REPO))
            after = " ".join(prose[m.end() : m.end() + 200].split())
            out.append(Span(rel, line, code, _section_at(heads, m.start()), after))
    return tuple(out)


# ------------------------------------------------------------------------------- commands


def _strip_comment(line: str) -> str:
    """The line without its shell comment (a `#` that starts a word outside quotes)."""
    quote = ""
    prev = " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and (quote == "'" or prev != "\\"):
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev in " \t;":
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def normalise(command: str) -> str:
    """Continuations joined, comments gone, runs of blanks outside quotes made one space."""
    text = command.replace("\\\n", "")  # as bash joins them, inside quotes too
    text = " ".join(_strip_comment(line) for line in text.splitlines())
    out, quote, prev = [], "", ""
    for ch in text.strip():
        if quote:
            if ch == quote and (quote == "'" or prev != "\\"):
                quote = ""
            out.append(ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch in " \t":
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(ch)
        prev = ch
    return "".join(out).strip()


def logical_commands(text: str) -> list[str]:
    """A shell block's commands, each as it would be typed (continuations, loops kept whole)."""
    commands: list[str] = []
    pending: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw[2:] if raw.startswith("$ ") else raw
        if not pending and not _strip_comment(line).strip():
            continue
        pending.append(line)
        words = _strip_comment(line).split()
        if words and words[0] in ("for", "while", "until", "if"):
            depth += 1
        if words and words[0] in ("done", "fi"):
            depth -= 1
        if line.endswith("\\") or depth > 0:
            continue
        commands.append("\n".join(pending))
        pending = []
    assert not pending, f"an unfinished command: {pending}"
    return commands


@dataclass(frozen=True)
class Invocation:
    """One `orchestrate ...` inside a command line: its words after the program name."""

    words: tuple[str, ...]
    line: str


def _tokens(command: str) -> list[str]:
    lex = shlex.shlex(normalise(command), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def simple_commands(command: str) -> list[list[str]]:
    """The simple commands of a command line (split at pipes, lists, subshells, loop words),
    each without its leading variable assignments and redirections; empty ones left out."""
    simple: list[list[str]] = [[]]
    for t in _tokens(command):
        if t in ("|", "||", "&&", ";", "(", ")", "&", "do", "done", "then", "fi"):
            simple.append([])
        elif t in (">", ">>", "<", "2>"):
            simple[-1].append("\0")  # the rest of this command is a redirection
        else:
            simple[-1].append(t)
    out = []
    for words in simple:
        if "\0" in words:
            words = words[: words.index("\0")]
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]  # EDITOR=... orchestrate ..., edge=$(...)
        if words:
            out.append(words)
    return out


def invocations(command: str) -> list[Invocation]:
    """Every `orchestrate` (or `.../bin/orchestrate`) the command line runs; a `for` loop's
    body once per value of its variable."""
    tokens = _tokens(command)
    var, values = "", [""]
    if tokens[:1] == ["for"]:
        stop = next(i for i, t in enumerate(tokens) if t in (";", "do"))
        var, values = tokens[1], tokens[3:stop]
    found = []
    for words in simple_commands(command):
        if os.path.basename(words[0]) != "orchestrate":
            continue
        uses = var and any(f"${var}" in w for w in words)
        for v in values if uses else [""]:
            args = tuple(w.replace(f"${var}", v) if uses else w for w in words[1:])
            found.append(Invocation(args, command))
    return found


PLACEHOLDER = re.compile(r"^\[?-{0,2}[a-z-]*=?[A-Z][A-Z0-9_]*(\.\.\.)?\]?$|^\[|\]$|\||\.\.\.")


def _is_synopsis(text: str) -> bool:
    try:
        words = shlex.split(text)
    except ValueError:
        return True
    return any(PLACEHOLDER.search(w) for w in words[1:]) and not any(
        w in ("&&", "|") for w in words
    )


@cache
def _command_path_words() -> set[str]:
    names: set[str] = set()

    def walk(p: Any) -> None:
        for child_name, child in _children(p).items():
            names.add(child_name)
            walk(child)

    walk(_parser())
    return names


def _children(p: Any) -> dict[str, Any]:
    import argparse

    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


TOP_COMMANDS = set(_children(_parser()))


@dataclass(frozen=True)
class Command:
    """A documented command line, where it is, and where it runs."""

    text: str  # as written (continuations and comments kept)
    where: str
    context: str  # "bundled", or the page#section whose example files make the fleet
    after: str = ""  # for inline code: the prose that follows it

    @property
    def key(self) -> str:
        return key(self.text)


def key(command: str) -> str:
    """How a command is named in the tables: normalised, every run of blanks one space."""
    return " ".join(normalise(command).split())


def _example_fleet_sections() -> dict[tuple[str, str], list[Block]]:
    """(page, section) -> its whole example files, for sections that have a fleet.yaml."""
    out: dict[tuple[str, str], list[Block]] = {}
    for b in blocks():
        if b.lang == "yaml" and re.fullmatch(r"# [\w./-]+\.ya?ml", b.first):
            out.setdefault((b.page, b.section), []).append(b)
    return {k: v for k, v in out.items() if any(b.first == "# fleet.yaml" for b in v)}


def context_of(page: str, section: str) -> str:
    return f"{page}#{section}" if (page, section) in _example_fleet_sections() else "bundled"


def shell_blocks() -> list[Block]:
    found = []
    for b in blocks():
        if b.lang in SHELL or (not b.lang and re.search(r"^(\$ )?orchestrate ", b.text, re.M)):
            found.append(b)
    return found


def block_commands(b: Block) -> list[Command]:
    ctx = context_of(b.page, b.section)
    return [Command(c, b.where, ctx) for c in logical_commands(b.text)]


def _is_command_span(s: Span) -> bool:
    text = s.text
    if re.match(r"python3 -m (pytest|orchestrator)\b", text):
        return True
    parts = [p.strip() for p in text.split("&&")]
    return any(re.match(r"orchestrate( |$)", p) for p in parts)


def inline_commands() -> list[Command]:
    """Inline code that is a whole command line (no placeholder) and parses, or that is not an
    orchestrate command; `orchestrate query` alone names the command and is not one."""
    found = []
    for s in spans():
        if not _is_command_span(s) or _is_synopsis(s.text):
            continue
        words = s.text.split()
        named = words[0] == "orchestrate" and "&&" not in words
        if named and all(w in _command_path_words() for w in words[1:]) and not _parses(words[1:]):
            continue  # a command's name in prose
        found.append(Command(s.text, s.where, context_of(s.page, s.section), s.after))
    return found


def synopses() -> list[Span]:
    """Inline code that shows a command's form: placeholders, or a subcommand without
    `orchestrate` (`plan --detailed-exitcode`)."""
    found = []
    for s in spans():
        words = s.text.split()
        if len(words) < 2:
            continue
        prefixed = words[0] == "orchestrate" and _is_synopsis(s.text)
        bare = words[0] in TOP_COMMANDS and bool(
            words[1].startswith("-")
            or words[1] in _children_of(words[0])
            or PLACEHOLDER.search(words[1])
        )
        if prefixed or bare:
            found.append(s)
    return found


def command_path(words: tuple[str, ...] | list[str]) -> list[str]:
    """The subcommands an invocation names: `--fleet inventory secrets check` -> secrets, check."""
    words = list(words)
    while words[:1] == ["--fleet"]:
        words = words[2:]
    path: list[str] = []
    p = _parser()
    while words and words[0] in _children(p):
        p = _children(p)[words[0]]
        path.append(words.pop(0))
    return path


@cache
def _children_of(name: str) -> set[str]:
    return set(_children(_children(_parser())[name]))


def _parses(words: list[str] | tuple[str, ...]) -> bool:
    try:
        _parse(words)
    except SystemExit:
        return False
    return True


def _parse(words: list[str] | tuple[str, ...]) -> list[Any]:
    """As main() parses: what follows `--` is the command a schedule runs, parsed on its own."""
    words = list(words)
    tail: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1 :]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        found = [_parser().parse_args(words)]
        if tail:
            found.append(_parser().parse_args(tail))
    return found


def documented_commands() -> list[Command]:
    out = [c for b in shell_blocks() for c in block_commands(b)]
    return out + inline_commands()


# --------------------------------------------------------------------------- where they run


@dataclass
class Work:
    """The module's temporary folders: the tools, the bundled fleet compiled once, the pages'
    own example fleets."""

    base: Path
    env: dict[str, str]
    bundled: Path  # holds inventory/, a compiled copy of the bundled fleet
    examples: dict[str, Path] = field(default_factory=dict)  # context -> fleet folder
    copies: int = 0

    def fresh_bundled(self) -> Path:
        """A copy of the compiled bundled fleet for commands that change it."""
        self.copies += 1
        root = self.base / f"copy-{self.copies}" / "checkout"
        shutil.copytree(self.bundled, root, symlinks=True)
        return root


def _tools(base: Path) -> dict[str, str]:
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "orchestrate"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m orchestrator.cli "$@"\n')
    editor = bin_dir / "docs-test-editor"
    editor.write_text("#!/bin/sh\nprintf 'edited: by the docs test\\n' >> \"$1\"\n")
    for tool in (wrapper, editor):
        tool.chmod(0o755)
    drop = ("ORCHESTRATE_FLEET", "SOPS_AGE_KEY_FILE", "EDITOR", "VISUAL", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=pythonpath,
        PYTHONDONTWRITEBYTECODE="1",  # nothing is written into the checkout
        SOPS_AGE_KEY_FILE=str(base / "no-admin-key" / "keys.txt"),
        EDITOR=str(editor),
        XDG_STATE_HOME=str(base / "state"),
    )
    return env


def _write_files(root: Path, files: list[Block]) -> Path:
    for b in files:
        path = root / b.first[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(b.text)
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    base = tmp_path_factory.mktemp("docs-run")
    env = _tools(base)
    root = base / "checkout"
    shutil.copytree(BUNDLED, root / "inventory", ignore=shutil.ignore_patterns(".orchestrate"))
    r = subprocess.run(
        ["orchestrate", "compile"], cwd=root / "inventory", env=env,
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    w = Work(base, env, root)
    for (page, section), files in _example_fleet_sections().items():
        name = re.sub(r"\W+", "-", f"{page}-{section}").strip("-").lower()
        w.examples[f"{page}#{section}"] = _write_files(base / "examples" / name, files)
    return w


@cache
def _bundled_data(root: str) -> dict[str, Any]:
    from orchestrator.api import fleet_data

    return fleet_data(root)


class Session:
    """One shell, command after command: `cd` and `export` carry over to the next."""

    def __init__(self, env: dict[str, str], cwd: Path, state: Path) -> None:
        self.env, self.cwd, self.state = env, cwd, state
        state.mkdir(parents=True, exist_ok=True)

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        envfile, pwdfile = self.state / "env", self.state / "pwd"
        script = "\n".join(
            [
                "set -e -o pipefail",
                f". {shlex.quote(str(envfile))}" if envfile.exists() else ":",
                f"cd {shlex.quote(str(self.cwd))}",
                f"trap 'rc=$?; pwd > {shlex.quote(str(pwdfile))}; "
                f"export -p > {shlex.quote(str(envfile))}; exit $rc' EXIT",
                command,
                "",
            ]
        )
        r = subprocess.run(
            ["bash", "-c", script], env=self.env, cwd=self.cwd, capture_output=True, text=True,
            timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.cwd = Path(pwdfile.read_text().strip())
        return r


def _names_inventory_folder(commands: list[Command]) -> bool:
    """Whether the commands are typed in the checkout, beside inventory/ (`cd inventory`,
    `--fleet inventory`), rather than in the fleet."""
    folder = re.compile(r"(?<!orchestrate )(?<![\w/.-])inventory(/|\s|$)")
    return any(folder.search(c.key) for c in commands)


def _session(work: Work, commands: list[Command], state: Path, fresh: bool) -> Session:
    context = commands[0].context
    assert {c.context for c in commands} == {context}
    if context != "bundled":
        return Session(work.env, work.examples[context], state)
    root = work.fresh_bundled() if fresh else work.bundled
    start = root if _names_inventory_folder(commands) else root / "inventory"
    return Session(work.env, start, state)


def _check_expected(c: Command, r: subprocess.CompletedProcess[str]) -> None:
    exp = EXPECT.get(c.key, Expect())
    said = f"{c.where}: {c.key}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert r.returncode == exp.code, said
    if exp.lines is not None:
        assert r.stdout.splitlines() == list(exp.lines), said
    for text in exp.out:
        assert text in r.stdout, said
    for text in exp.err:
        assert text in r.stderr, said
    printed = re.match(r"prints ((?:`[^`]+`(?:,| and|,? and)? ?)+)", c.after)
    if printed:  # "prints `1108` and `9090`"
        assert r.stdout.split() == re.findall(r"`([^`]+)`", printed.group(1)), said


def check_not_run(c: Command, work: Work) -> None:
    """A command of the e2e table: it parses as main() parses it, and what it names exists in
    the bundled fleet (the only fleet these commands are written for)."""
    from orchestrator.selection import select

    assert c.context == "bundled", c
    data = _bundled_data(str(work.bundled / "inventory"))
    hosts, images = set(data["hosts"]), set(data["images"])
    for inv in invocations(c.text):
        try:
            parsed = _parse(inv.words)
        except SystemExit:
            pytest.fail(f"{c.where}: does not parse: orchestrate {' '.join(inv.words)}")
        for args in parsed:
            for sel in (getattr(args, "limit", None), getattr(args, "hosts", None)):
                if sel:
                    assert select(data, sel), (c.where, sel)
            if getattr(args, "host", None):
                assert args.host in hosts, (c.where, args.host)
            if args.run.__name__.startswith("_image"):
                for name in getattr(args, "names", None) or [getattr(args, "name", None)]:
                    assert name is None or name in images, (c.where, name)
            if getattr(args, "from_image", None):
                assert args.from_image in images, (c.where, args.from_image)


# What may run in the fast lane: these programs, and orchestrate's commands but these
HERE = {"cd", "export", "orchestrate", "ansible-playbook", "printf", "echo", "cp", "cat", "grep",
        "awk", "jq", "head", "sort", "diff", "ls", "for"}  # fmt: skip
NOT_HERE = {
    ("testbed", "up"): "starts containers",
    ("testbed", "down"): "removes containers",
    ("testbed", "status"): "reads the running testbed",
    ("apply",): "converges hosts",
    ("plan",): "contacts the hosts (without --offline)",
    ("image", "build"): "builds images as root",
    ("image", "boot"): "boots images under qemu",
    ("schedule", "add"): "installs a crontab entry",
    ("schedule", "remove"): "changes the crontab",
    ("schedule", "run"): "runs a scheduled plan or apply",
    ("test",): "runs molecule in podman",
    ("generations",): "asks the host over SSH",
    ("rollback",): "restores hosts over SSH",
    ("confirm",): "confirms hosts' trials over SSH",
}


def cannot_run_here(c: Command) -> str:
    """Why a command must not run in the fast lane, or ""."""
    for words in simple_commands(c.text):
        program = os.path.basename(words[0])
        if program not in HERE:
            return f"runs {program}"
    for inv in invocations(c.text):
        path = tuple(command_path(inv.words))
        why = NOT_HERE.get(path[:2]) or NOT_HERE.get(path[:1])
        if why and not (path == ("plan",) and "--offline" in inv.words):
            return why
        if path == ("secrets", "host-key") and "--from-host" in inv.words:
            return "reads the key over SSH"
    return ""


RAN: list[str] = []  # what the tests below ran, for the count in the summary


def run_commands(work: Work, commands: list[Command], name: str, *, block: bool) -> None:
    """A block's commands in one session in a fresh copy; inline commands each in a session of
    its own, in the shared copy (they only read, or compile it again)."""
    state = work.base / "sessions" / name
    session = _session(work, commands, state, fresh=True) if block else None
    for n, c in enumerate(commands):
        if c.key in E2E:
            check_not_run(c, work)
            continue
        reason = cannot_run_here(c)
        if reason:
            pytest.fail(f"{c.where}: `{c.key}` {reason}: add it to E2E with the test that runs it")
        here = session or _session(work, [c], state / str(n), fresh=False)
        r = here.run(c.text)
        _check_expected(c, r)
        RAN.append(c.key)


# ----------------------------------------------------------------------------- the commands


def _block_id(b: Block) -> str:
    return b.where


@pytest.mark.parametrize("block", shell_blocks(), ids=_block_id)
def test_each_shell_block_runs_as_written(block: Block, work: Work) -> None:
    name = re.sub(r"\W+", "-", block.where)
    run_commands(work, block_commands(block), name, block=True)


def _inline_groups() -> dict[str, list[Command]]:
    """Inline commands by page and context, in the order the page gives them."""
    groups: dict[str, list[Command]] = {}
    for c in inline_commands():
        groups.setdefault(f"{c.where.split(':')[0]}-{c.context}", []).append(c)
    return groups


@pytest.mark.parametrize("group", sorted(_inline_groups()))
def test_inline_commands_run_as_written(group: str, work: Work) -> None:
    commands = _inline_groups()[group]
    run_commands(work, commands, re.sub(r"\W+", "-", group), block=False)


def test_expressions_shown_on_an_example_fleet_answer(work: Work) -> None:
    """`${hosts."data-storage".config...}` in a section with example files reads a real value."""
    seen = 0
    for s in spans():
        m = re.fullmatch(r"\$\{(hosts\..+)\}", s.text)
        if not m or context_of(s.page, s.section) == "bundled":
            continue
        root = work.examples[context_of(s.page, s.section)]
        r = subprocess.run(
            ["orchestrate", "query", m.group(1)], cwd=root, env=work.env,
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0 and json.loads(r.stdout) is not None, (s.where, r.stderr)
        seen += 1
    assert seen


def _test_source(ref: str) -> str:
    """The source of tests/FILE.py::FUNCTION with the fixtures and helpers of its file that it
    uses, transitively."""
    file, name = ref.split("::")
    text = (REPO / file).read_text()
    tree = ast.parse(text)
    functions = {
        n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert name in functions, f"{ref}: no such test"
    seen: set[str] = set()
    todo = [name]
    while todo:
        fn = functions[todo.pop()]
        if fn.name in seen:
            continue
        seen.add(fn.name)
        used = {a.arg for a in fn.args.args}
        used |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        todo += [u for u in used if u in functions and u not in seen]
    return "\n".join(ast.get_source_segment(text, functions[n]) or "" for n in sorted(seen))


def test_the_e2e_table_names_documented_commands_and_tests_that_run_them() -> None:
    documented = {c.key for c in documented_commands()}
    stale = sorted(set(E2E) - documented)
    assert not stale, f"E2E entries no page has any more: {stale}"
    stale = sorted(set(EXPECT) - documented)
    assert not stale, f"EXPECT entries no page has any more: {stale}"
    for command, (why, ref) in E2E.items():
        assert why and cannot_run_here(Command(command, "E2E", "bundled")), (
            f"{command!r} can run in the fast lane: take it out of E2E"
        )
        refs = ref.split("; ")
        tests = [r for r in refs if "::" in r]
        for r in refs:
            if "::" in r:
                continue
            if (REPO / r).is_file() and not r.startswith("tests/"):
                assert command in (REPO / r).read_text(), f"{r} does not run {command!r}"
            elif (REPO / r).is_file():
                continue  # a whole test file
            else:
                assert command.startswith("python3 -m pytest"), (command, r)  # the suite itself
        source = "\n".join(_test_source(t) for t in tests)
        for inv in invocations(command):
            path = command_path(inv.words)
            quoted = r",\s*".join(f'"{w}"' for w in path)
            assert re.search(quoted, source), f"{tests} do not run `orchestrate {' '.join(path)}`"


def test_every_documented_command_is_run_or_in_the_e2e_table(work: Work) -> None:
    """The commands above run everything not in E2E; this counts them, so that a page without
    commands, or a table that swallowed everything, shows."""
    commands = documented_commands()
    tabled = [c for c in commands if c.key in E2E]
    run = [c for c in commands if c.key not in E2E]
    assert len(run) >= 20 and len(tabled) >= 15, (len(run), len(tabled))
    for c in tabled:
        check_not_run(c, work)


# ------------------------------------------------------------------------------- synopses


def _check_synopsis(words: list[str], where: str) -> None:
    """`orchestrate query EXPR [--format json|yaml|lines] [-o BUILD]`: the subcommands exist,
    every flag is one of the command's, and listed choices are its choices."""
    import argparse

    top = _parser()
    parsers = [top]
    i = 0
    while i < len(words):
        alternatives = words[i].split("|")
        kids = _children(parsers[0])
        if kids and all(a in kids for a in alternatives):
            parsers = [kids[a] for a in alternatives]
            i += 1
            continue
        break
    rest = words[i:]
    if "--" in rest:  # schedule add NAME --cron EXPR -- plan|apply ARGS
        cut = rest.index("--")
        _check_synopsis(rest[cut + 1 :], where)
        rest = rest[:cut]
    for p in parsers:
        # a hidden flag (help=SUPPRESS: an old spelling kept to point at the new one) is no
        # flag to document; --fleet is the top level's
        options = {
            s: a for a in p._actions for s in a.option_strings if a.help != argparse.SUPPRESS
        }
        options.update({s: a for a in top._actions for s in a.option_strings})
        positionals = [a for a in p._actions if not a.option_strings]
        for j, w in enumerate(rest):
            w = w.strip("[]")
            if w.startswith("-"):
                flag = w.split("=")[0]
                assert flag in options, f"{where}: {p.prog} has no {flag}"
                action = options[flag]
                nxt = rest[j + 1].strip("[]") if j + 1 < len(rest) else ""
                if action.choices and "|" in nxt:
                    assert set(nxt.split("|")) == set(action.choices), (where, flag, nxt)
            elif "|" in w and not PLACEHOLDER.fullmatch(w.replace("|", "")):
                prev = rest[j - 1].strip("[]") if j else ""
                if prev.startswith("-"):
                    continue  # checked with its flag
                choices = {
                    c
                    for a in positionals
                    if a.choices
                    for c in a.choices
                    if not isinstance(a, argparse._SubParsersAction)
                }
                assert set(w.split("|")) <= choices, (where, w)


@pytest.mark.parametrize("span", synopses(), ids=lambda s: f"{s.where}:{s.text}")
def test_synopses_name_real_subcommands_flags_and_choices(span: Span) -> None:
    words = span.text.split()
    if words[0] == "orchestrate":
        words = words[1:]
    _check_synopsis(words, span.where)


# -------------------------------------------------------------------------- example files

WHOLE = re.compile(r"# ([\w./-]+\.ya?ml)")
PART = re.compile(r"# part of (fleet\.yaml|a module)")
OUTLINE = re.compile(r"# outline of a module\b")


def _compile(root: Path, env: dict[str, str]) -> None:
    r = subprocess.run(
        ["orchestrate", "compile"], cwd=root, env=env,
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def _example_file_sections() -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in blocks():
        if b.lang == "yaml" and WHOLE.fullmatch(b.first):
            out.setdefault(f"{b.page}#{b.section}", []).append(b)
    return out


@pytest.mark.parametrize("section", sorted(_example_file_sections()))
def test_example_files_compile(section: str, work: Work) -> None:
    """A section's whole files make a fleet when one is fleet.yaml; a module shown alone is
    imported by a host of the bundled fleet."""
    files = _example_file_sections()[section]
    if any(b.first == "# fleet.yaml" for b in files):
        root = _write_files(work.base / "compiled" / re.sub(r"\W+", "-", section), files)
        _compile(root, work.env)
        return
    root = work.fresh_bundled() / "inventory"
    _write_files(root, files)
    fleet = yaml.safe_load((root / "fleet.yaml").read_text())
    fleet["defaults"] += [b.first[2:] for b in files]
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    _compile(root, work.env)


def _fragments() -> list[Block]:
    return [b for b in blocks() if b.lang == "yaml" and PART.fullmatch(b.first)]


@pytest.mark.parametrize("block", _fragments(), ids=_block_id)
def test_fragments_compile_wrapped_in_the_bundled_fleet(block: Block, work: Work) -> None:
    """`# part of fleet.yaml`: its keys replace the bundled fleet's; `# part of a module`: a
    module every bundled host imports. The folders `module_paths` names are made, with a module
    in each that every host imports, and the hosts read its option."""
    root = work.fresh_bundled() / "inventory"
    fleet = yaml.safe_load((root / "fleet.yaml").read_text())
    part = yaml.safe_load(block.text)
    assert isinstance(part, dict) and part, block.where
    if PART.fullmatch(block.first).group(1) == "fleet.yaml":  # type: ignore[union-attr]
        fleet.update(part)
        for n, folder in enumerate(part.get("module_paths", [])):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / f"shared{n}.yaml").write_text(
                f"options:\n  shared{n}.motd: {{type: string, default: shared}}\n"
            )
            fleet["defaults"].append(f"{folder}/shared{n}.yaml")
    else:
        (root / "modules" / "fragment.yaml").write_text(block.text)
        fleet["defaults"].append("modules/fragment.yaml")
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    _compile(root, work.env)
    built = json.loads((root / ".orchestrate/build/fleet.json").read_text())
    for key in ("images",):
        if key in part:
            assert set(built[key]) == set(part[key]), block.where
    for n, _folder in enumerate(part.get("module_paths", [])):
        assert {h["config"][f"shared{n}"]["motd"] for h in built["hosts"].values()} == {"shared"}


def test_the_module_outline_lists_every_key_a_module_may_have() -> None:
    (outline,) = [b for b in blocks() if b.lang == "yaml" and OUTLINE.match(b.first)]
    keys = set(yaml.safe_load(outline.text))
    schema = json.loads((REPO / "schemas" / "module.schema.json").read_text())
    assert keys == set(schema["properties"]), (outline.where, keys ^ set(schema["properties"]))


def _special(page: str, lang: str, start: str) -> Block:
    (b,) = [b for b in blocks() if (b.page, b.lang) == (page, lang) and b.first.startswith(start)]
    return b


# the blocks that are neither commands nor fleet files: (page, language, first line) -> the test
SPECIAL = {
    ("docs/language.md", "json", '"yaml.customTags"'): "test_the_editor_setting_lists_the_tags",
    ("docs/language.md", "python", "from orchestrator"): "test_the_lib_example_is_the_bundled_one",
    ("docs/language.md", "", ".orchestrate/build/"): "test_the_build_listing_is_compiles_output",
    ("docs/plan.md", "", "~ a  roles: base"): "test_the_plan_sample_is_what_plan_prints",
}


def test_every_block_is_checked() -> None:
    for b in blocks():
        if b in shell_blocks():
            continue
        if b.lang == "yaml":
            assert WHOLE.fullmatch(b.first) or PART.fullmatch(b.first) or OUTLINE.match(b.first), (
                f"{b.where}: a yaml block starts with `# PATH`, `# part of ...` or `# outline of`"
            )
            continue
        known = [t for (page, lang, start), t in SPECIAL.items()
                 if (b.page, b.lang) == (page, lang) and b.first.startswith(start)]  # fmt: skip
        assert len(known) == 1, f"{b.where}: a {b.lang or 'plain'} block no test checks"
        assert known[0] in globals(), known


def test_the_editor_setting_lists_the_tags() -> None:
    b = _special("docs/language.md", "json", '"yaml.customTags"')
    tags = json.loads("{" + b.text + "}")["yaml.customTags"]
    kinds = ("scalar", "sequence", "mapping")
    assert sorted(tags) == sorted(f"{t} {k}" for t in ("!default", "!force") for k in kinds)
    from orchestrator.loader import yamlfile

    assert set(yamlfile.PRIORITY_TAGS) == {"!default", "!force"}  # the tags the loader knows


def test_the_lib_example_is_the_bundled_one(work: Work) -> None:
    b = _special("docs/language.md", "python", "from orchestrator")
    lib = (BUNDLED / "lib" / "banner.py").read_text()
    import_line, decorator = b.text.splitlines()[0], b.text.splitlines()[3]
    assert import_line in lib and decorator.split("#")[0].strip() in lib
    fn = next(n for n in ast.parse(lib).body if isinstance(n, ast.FunctionDef))
    shown = next(n for n in ast.parse(b.text).body if isinstance(n, ast.FunctionDef))

    def signature(f: ast.FunctionDef) -> tuple[str, list[str]]:
        return f.name, [a.arg for a in f.args.args]

    assert signature(fn) == signature(shown)
    built = json.loads((work.bundled / "inventory/.orchestrate/build/fleet.json").read_text())
    assert "is managed by orchestrate" in json.dumps(built)  # the function ran in the compile


def test_the_build_listing_is_compiles_output(work: Work) -> None:
    b = _special("docs/language.md", "", ".orchestrate/build/")
    build = work.bundled / "inventory" / ".orchestrate" / "build"
    listed = re.findall(r"^  (\S+)", b.text, re.M)
    named = {"H.json": "data-storage.json", "R": "base", "F.yaml": "wireguard.yaml"}
    for entry in listed:
        path = "/".join(named.get(part, part) for part in entry.split("/"))
        assert (build / path).exists(), (b.where, entry, path)
    top = {e.split("/")[0] for e in listed}
    assert {p.name for p in build.iterdir()} == top, (b.where, top)


PLAN_FLEET = {
    "fleet.yaml": """
        name: plan-example
        builders: {x86_64: {arch: x86_64}}
        defaults: [base.yaml, web.yaml]
        hosts:
          a: {builder: x86_64, modules: [a.yaml]}
          b: {builder: x86_64}
    """,
    "base.yaml": """
        options:
          base.packages: {type: array, items: {type: string}, default: [git, curl]}
          base.motd: {type: string, default: hello}
          base.extra: {type: object, additionalProperties: true, default: {}}
        tasks: []
    """,
    "web.yaml": """
        options:
          web.enable: {type: boolean, default: false}
        role: nginx
        role_when: config.web.enable
    """,
    "roles/nginx/tasks/main.yml": "[]\n",
    "a.yaml": """
        config:
          base.extra.ntp: {server: time.example.org}
          base.motd: welcome
          base.packages: [git, vim]
    """,
}


def test_the_plan_sample_is_what_plan_prints(work: Work) -> None:
    """docs/plan.md's sample, from a fleet whose host a was last applied with the defaults,
    web enabled (role nginx ran), and whose host b was never applied."""
    from conftest import write_tree

    from orchestrator.executor import state

    b = _special("docs/plan.md", "", "~ a  roles: base")
    root = write_tree(work.base / "plan-sample", PLAN_FLEET)
    last = {"base": {"extra": {}, "motd": "hello", "packages": ["git", "curl"]},
            "web": {"enable": True}}  # fmt: skip
    state.save_host_state(str(root), "a", last, ["base", "nginx"], "run-1", {})
    r = subprocess.run(
        ["orchestrate", "plan", "--offline"], cwd=root, env=work.env,
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == b.text


def _every_flag() -> set[str]:
    import argparse

    flags: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            if a.help != argparse.SUPPRESS or "--fleet" in a.option_strings:
                flags.update(a.option_strings)
        for child in _children(p).values():
            walk(child)

    walk(_parser())
    return flags


def test_flags_named_alone_in_the_prose_exist() -> None:
    """`--out`, `--console-log FILE`, `-vvv`: a flag some command has (a renamed one fails)."""
    flags = _every_flag()
    seen = 0
    for s in spans():
        m = re.match(r"(--?[a-z][\w-]*)", s.text)
        if not m:
            continue
        flag = re.sub(r"^-([a-z])\1+$", r"-\1", m.group(1))  # -vvv is -v three times
        assert flag in flags, f"{s.where}: no command has {flag}"
        seen += 1
    assert seen > 10
