"""The end of every `--help`: examples on the bundled fleet (run from inventory/), then the exit
codes that command can return. One table, applied to the parser tree once it is built, so that
no command is left without either (a test walks the tree)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from orchestrator.exitcodes import (
    CHANGES,
    FAILED,
    INTERNAL,
    INTERRUPTED,
    INVALID,
    LOCKED,
    MEANINGS,
    OK,
)

EXIT_CODES = MEANINGS  # what a code means wherever a command does not say more
ALWAYS = (OK, INVALID, INTERNAL, INTERRUPTED)  # any command: success, bad input, a crash, Ctrl-C

Codes = Sequence[int | tuple[int, str]]


class Verbatim(str):
    """Text that help prints as written (an epilog's example lines must not be re-wrapped)."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter (descriptions wrapped to the terminal), except that
    :class:`Verbatim` text keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if isinstance(text, Verbatim):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def epilog(examples: Sequence[str], codes: Codes = ALWAYS, note: str = "") -> Verbatim:
    """``note``, then "example(s):" with one command line each, then "exit codes:". A code is a
    number (its meaning from :data:`EXIT_CODES`) or (number, what it means for this command)."""
    meaning = {c: EXIT_CODES[c] for c in ALWAYS}
    for c in codes:
        number, text = c if isinstance(c, tuple) else (c, EXIT_CODES[c])
        meaning[number] = text
    lines = [note.rstrip("\n"), ""] if note else []
    lines.append("example:" if len(examples) == 1 else "examples:")
    lines += [f"  {e}" for e in examples]
    lines += ["", "exit codes:"]
    lines += [f"  {n:<4} {t}" for n, t in sorted(meaning.items())]
    return Verbatim("\n".join(lines) + "\n")


FLEET_NOTE = """\
The fleet is --fleet DIR, else $ORCHESTRATE_FLEET, else the nearest folder above the working
directory that holds fleet.yaml. Errors name file:line:col; nothing is written when any is found.
Reporting commands take --json: one document on stdout, errors included (docs/conventions.md)."""

LOCK_HELD = (LOCKED, "another run holds the fleet's lock (nothing ran)")

# command path -> (examples, exit codes besides 0, 1, 70 and 130)
HELP: dict[tuple[str, ...], tuple[tuple[str, ...], Codes]] = {
    (): (
        (
            "cd inventory && orchestrate compile",
            "orchestrate --fleet inventory explain data-storage services.prometheus.port",
            "orchestrate plan --limit @core --detailed-exitcode",
        ),
        tuple(EXIT_CODES),
    ),
    ("compile",): (
        ("orchestrate compile", "orchestrate compile --out /tmp/homelab-build --json"),
        (),
    ),
    ("query",): (
        (
            "orchestrate query 'values(hosts)[].name' --format lines",
            "orchestrate query 'groups.tag_core' --format yaml",
            "orchestrate compile -o /tmp/b && orchestrate query 'keys(hosts)' -o /tmp/b",
        ),
        (),
    ),
    ("inventory",): (
        ("orchestrate inventory --list", "orchestrate inventory --host cortex-alpha"),
        (),
    ),
    ("options",): (
        (
            "orchestrate options services.prometheus",
            "orchestrate options --library --json",
        ),
        (),
    ),
    ("explain",): (
        (
            "orchestrate explain data-storage services.prometheus.port",
            "orchestrate explain cortex-alpha networking.firewall.allowed_tcp_ports --json",
        ),
        (),
    ),
    ("plan",): (
        (
            "orchestrate plan --offline",
            "orchestrate plan --limit cortex-alpha -o tonight.plan",
            "orchestrate plan --limit 'arch:x86_64:!LINDA' --json --detailed-exitcode",
        ),
        (
            (CHANGES, "--detailed-exitcode: changes were found"),
            (FAILED, "check mode failed on a host, or a host was unreachable"),
            LOCK_HELD,
        ),
    ),
    ("show",): (("orchestrate plan -o tonight.plan && orchestrate show tonight.plan",), ()),
    ("apply",): (
        (
            "orchestrate apply --limit cortex-alpha",
            "orchestrate apply tonight.plan",
            "orchestrate apply --yes --serial 2 --max-fail-percent 0 --json",
            "orchestrate apply --limit cortex-alpha --confirm-timeout 60 --on-failure stop",
        ),
        (
            (INVALID, "invalid input, a saved plan that no longer holds, or nothing applied"),
            FAILED,
            LOCK_HELD,
        ),
    ),
    ("generations",): (
        ("orchestrate generations cortex-alpha", "orchestrate generations pi-1 --json"),
        ((INVALID, "no such host, or a generation record changed on the host"),),
    ),
    ("rollback",): (
        (
            "orchestrate rollback --limit cortex-alpha",
            "orchestrate rollback --limit @tag_board --to 3",
        ),
        ((FAILED, "a host refused (a record changed on it) or could not be reached"), LOCK_HELD),
    ),
    ("confirm",): (
        (
            "orchestrate apply --trial 10m --limit cortex-alpha",
            "orchestrate confirm --limit cortex-alpha",
        ),
        ((FAILED, "a host's trial had ended, or it could not be reached"), LOCK_HELD),
    ),
    ("testbed",): (
        (
            "orchestrate testbed up --hosts cortex-alpha,data-storage",
            "orchestrate testbed status",
            "orchestrate testbed down",
        ),
        ((FAILED, "status: a container is stopped or its sshd does not answer"),),
    ),
    ("testbed", "up"): (
        (
            "orchestrate testbed up",
            "orchestrate testbed up --hosts @core",
            "orchestrate testbed up --from-image data-storage-vm",
        ),
        (),
    ),
    ("testbed", "status"): (
        ("orchestrate testbed status", "orchestrate testbed status --json"),
        ((FAILED, "a container is stopped or its sshd does not answer"),),
    ),
    ("testbed", "down"): (("orchestrate testbed down",), ()),
    ("schedule",): (
        (
            "orchestrate schedule add drift --cron '*/30 * * * *' -- plan --detailed-exitcode",
            "orchestrate schedule list",
            "orchestrate schedule run drift",
        ),
        (
            (CHANGES, "run: a scheduled plan --detailed-exitcode found changes"),
            (FAILED, "run: the scheduled run finished with failed or unreachable hosts"),
            (LOCKED, "run: another run holds the fleet's lock; the run was skipped"),
        ),
    ),
    ("schedule", "add"): (
        (
            "orchestrate schedule add drift --cron '*/30 * * * *' -- plan --detailed-exitcode",
            "orchestrate schedule add nightly --cron '0 3 * * *' -- apply --limit @tag_core",
        ),
        (),
    ),
    ("schedule", "list"): (("orchestrate schedule list", "orchestrate schedule list --json"), ()),
    ("schedule", "remove"): (("orchestrate schedule remove drift",), ()),
    ("schedule", "run"): (
        ("orchestrate schedule run drift",),
        (
            (INVALID, "invalid input, or the scheduled run's input was invalid"),
            (CHANGES, "a scheduled plan --detailed-exitcode found changes"),
            (FAILED, "the scheduled run finished with failed or unreachable hosts"),
            (LOCKED, "another run holds the fleet's lock: the run was skipped"),
        ),
    ),
    ("secrets",): (
        (
            "orchestrate secrets keygen                 # once per admin",
            "orchestrate secrets host-key cortex-alpha  # once per host that uses secrets",
            "orchestrate secrets edit wireguard         # secrets/wireguard.yaml in $EDITOR",
            "orchestrate secrets rekey                  # after adding or removing a host or admin",
            "orchestrate secrets check                  # in CI: no plaintext, nothing missing",
        ),
        ((INVALID, "invalid input; check: a problem with the fleet's secrets"),),
    ),
    ("secrets", "keygen"): (
        (
            "orchestrate secrets keygen",
            "orchestrate secrets keygen --key-file ~/.config/sops/age/keys.txt",
        ),
        (),
    ),
    ("secrets", "host-key"): (
        (
            "orchestrate secrets host-key cortex-alpha",
            "orchestrate secrets host-key data-storage "
            "--import demo-keys/hosts/data-storage.agekey --force",
            "orchestrate secrets host-key terminal-zero --from-host --force",
        ),
        (),
    ),
    ("secrets", "edit"): (
        ("orchestrate secrets edit wireguard", "EDITOR=nano orchestrate secrets edit wireguard"),
        ((INTERRUPTED, "interrupted (Ctrl-C, SIGTERM, SIGHUP); the decrypted copy is removed"),),
    ),
    ("secrets", "encrypt"): (
        (
            "printf 'api_key: changeme\\n' > secrets/api.yaml && "
            "orchestrate secrets encrypt secrets/api.yaml",
        ),
        (),
    ),
    ("secrets", "rekey"): (("orchestrate secrets rekey",), ()),
    ("secrets", "check"): (
        ("orchestrate secrets check", "orchestrate secrets check --json"),
        ((INVALID, "plaintext files, missing secrets or wrong recipients; or invalid input"),),
    ),
    ("image",): (
        (
            "orchestrate image list",
            "orchestrate image build data-storage-vm",
            "orchestrate image boot data-storage-vm",
        ),
        ((LOCKED, "build: another build writes to the same folder"),),
    ),
    ("image", "list"): (("orchestrate image list", "orchestrate image list --json"), ()),
    ("image", "build"): (
        (
            "orchestrate image build data-storage-vm",
            "orchestrate image build pi-cards --limit pi-1",
            "orchestrate image build --all --out /srv/images",
        ),
        ((LOCKED, "another build writes to the same folder"),),
    ),
    ("image", "boot"): (
        (
            "orchestrate image boot data-storage-vm",
            "orchestrate image boot data-storage-vm --timeout 900 --console-log console.txt",
        ),
        ((INVALID, "invalid input, or an image did not come up in time"),),
    ),
    ("test",): (
        ("orchestrate test", "orchestrate test nginx firewall --jobs 2"),
        ((FAILED, "a role's scenario failed (the end of its log is shown)"),),
    ),
    ("completion",): (
        (
            "orchestrate completion bash > ~/.local/share/bash-completion/completions/orchestrate",
            "echo 'eval \"$(orchestrate completion zsh)\"' >> ~/.zshrc",
        ),
        (),
    ),
}


def children(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name (aliases once)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if child not in out.values():
                    out[name] = child
    return out


def finish_help(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give ``parser`` and every subcommand below it its examples and exit codes."""
    examples, codes = HELP[path]
    parser.epilog = epilog(examples, codes, FLEET_NOTE if not path else "")
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = HelpFormatter
    for name, child in children(parser).items():
        finish_help(child, (*path, name))


__all__ = ["EXIT_CODES", "HELP", "HelpFormatter", "Verbatim", "epilog", "finish_help"]
