"""The command line: flags to one library call each, the single error boundary, and the exit
code each result or error carries (their table is orchestrator.exitcodes). The documents `--json`
prints are made in orchestrator.reporter.shapes, the end of every `--help` in
orchestrator.reporter.helptext.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from orchestrator import __version__, exitcodes
from orchestrator.errors import FleetErrors, OrchestrateError, UsageError, one_line
from orchestrator.reporter import shapes

JSON_HELP = "print the result, or the errors, as one JSON document (docs/conventions.md)"

SELECTION = "hosts, globs (pi-*), groups and tags (core, @core), arch:X; " + (
    "! excludes, & intersects; comma- or colon-separated"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake exits 1 like every other invalid input: 2 means "plan
    found changes" to scripts that run `plan --detailed-exitcode`."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _version_text() -> str:
    """The version, and for a git checkout the commit (a wheel names only its version)."""
    from orchestrator.paths import checkout_commit

    commit = checkout_commit()
    return f"orchestrate {__version__}" + (f" (checkout at {commit})" if commit else "")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="orchestrate",
        description="Compile a NixOS-style fleet of YAML modules into Ansible content, "
        "query it, explain it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=_version_text())
    p.add_argument("--fleet", metavar="DIR", help="the fleet folder (holds fleet.yaml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # in this order in --help and in the completion scripts
    for declare in (
        _compile_parser,
        _query_parser,
        _inventory_parser,
        _options_parser,
        _explain_parser,
        _plan_parser,
        _show_parser,
        _apply_parser,
        _generation_parsers,
        _testbed_parsers,
        _schedule_parsers,
        _secrets_parsers,
        _image_parsers,
        _test_parser,
        _completion_parser,
    ):
        declare(sub)
    _fleet_flag_everywhere(p)
    from orchestrator.reporter.helptext import finish_help

    finish_help(p)
    return p


def _compile_parser(sub: Any) -> None:
    c = sub.add_parser(
        "compile",
        help="evaluate, validate and write the build",
        description="Evaluate every host, validate it against the option schemas "
        "and write inventory, roles, site.yml, ansible.cfg and a manifest to "
        ".orchestrate/build (or --out), atomically.",
    )
    c.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="where to write the build: a new or empty folder, or an earlier build",
    )
    c.add_argument(
        "--full",
        action="store_true",
        help="evaluate every host again even where the last compile's cache says which "
        "changed (docs/language.md)",
    )
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.set_defaults(run=_compile)


def _query_parser(sub: Any) -> None:
    q = sub.add_parser(
        "query",
        help="JMESPath over {hosts, images, groups, fleet}",
        description="Evaluate a JMESPath expression over the compiled fleet, e.g. "
        "orchestrate query 'values(hosts)[].deploy.host' or "
        "\"values(hosts)[?arch=='aarch64'].name\".",
    )
    q.add_argument("expr", metavar="EXPR")
    q.add_argument(
        "--format", choices=("json", "yaml", "lines"), default="json", help="(default: json)"
    )
    _build_flag(q)
    q.add_argument("--output", dest="old_output", metavar="FORMAT", help=argparse.SUPPRESS)
    q.set_defaults(run=_query)


def _inventory_parser(sub: Any) -> None:
    i = sub.add_parser(
        "inventory",
        help="Ansible dynamic-inventory protocol",
        description="Use as `ansible-playbook -i 'orchestrate inventory' ...` "
        "through a wrapper script, or to inspect what Ansible will see.",
    )
    g = i.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="all groups and host variables")
    g.add_argument("--host", metavar="H", help="one host's variables")
    _build_flag(i)
    i.set_defaults(run=_inventory)


def _options_parser(sub: Any) -> None:
    o = sub.add_parser(
        "options",
        help="declared options: type, default, description, file",
        description="List the options the fleet's modules declare. PATH selects "
        "one option or every option below a prefix, e.g. services.prometheus.",
    )
    o.add_argument("path", nargs="?", metavar="PATH")
    o.add_argument("--json", action="store_true", help=JSON_HELP)
    o.add_argument(
        "--library",
        action="store_true",
        help="the options of the modules shipped with orchestrate (no fleet needed)",
    )
    o.set_defaults(run=_options)


def _explain_parser(sub: Any) -> None:
    e = sub.add_parser(
        "explain",
        help="why an option has its value on a host",
        description="Show the final value of PATH on HOST, every definition "
        "(file:line, priority, condition) and why the winner won.",
    )
    e.add_argument("host", metavar="HOST")
    e.add_argument("path", metavar="PATH")
    e.add_argument("--json", action="store_true", help=JSON_HELP)
    e.set_defaults(run=_explain)


def _build_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="the build to read, as `compile --out DIR` wrote it (compiled first when stale; "
        "default .orchestrate/build)",
    )


def _fleet_flag_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--fleet DIR` after the subcommand too (`orchestrate plan --fleet inventory`), as
    people type it; the top-level value stands unless a subcommand gives one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                child.add_argument(
                    "--fleet", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS
                )
                _fleet_flag_everywhere(child)


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        "-l",
        metavar="SEL",
        help=SELECTION + " (default: every host)",
    )
    p.add_argument("--forks", "-f", type=int, metavar="N", help="parallel hosts")
    p.add_argument(
        "--strategy",
        choices=("mitogen", "ansible"),
        help="how Ansible drives the hosts: mitogen (one Python interpreter per host for the "
        "whole run; the default) or ansible (its own linear strategy); default: fleet.yaml's "
        "deploy.strategy",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="pass -v... to Ansible (its output stays in the run record)",
    )
    p.add_argument(
        "--diff",
        action="store_true",
        help="have Ansible report file diffs (plan always does; secrets never show)",
    )


def _plan_parser(sub: Any) -> None:
    pl = sub.add_parser(
        "plan",
        help="what would change on each host, and why",
        description="Compile, then show per host the options changed since the last successful "
        "apply (old -> new), the roles that would run and what check mode says would change, "
        "with diffs. Tasks check mode cannot preview are listed as not previewable.",
    )
    _selection(pl)
    pl.add_argument("--offline", action="store_true", help="do not contact the hosts")
    pl.add_argument("-o", "--out", metavar="FILE", help="save the plan for `apply FILE`")
    pl.add_argument("--json", action="store_true", help=JSON_HELP)
    pl.add_argument(
        "--detailed-exitcode", action="store_true", help="exit 2 when anything would change"
    )
    pl.set_defaults(run=_plan)


def _show_parser(sub: Any) -> None:
    sh = sub.add_parser(
        "show",
        help="render a plan saved by `plan -o`",
        description="Print a saved plan as `plan` printed it, or as JSON: what `apply PLAN` "
        "would do. Reads only the file; nothing is compiled and no host is contacted.",
    )
    sh.add_argument("plan_file", metavar="PLAN")
    sh.add_argument("--json", action="store_true", help=JSON_HELP)
    sh.set_defaults(run=_show)


def _apply_parser(sub: Any) -> None:
    ap = sub.add_parser(
        "apply",
        help="converge the hosts through ansible-runner",
        description="Compile and run the site playbook through ansible-runner, with a live "
        "per-host display and a final table. With PLAN (from `plan -o`), refuse when any input "
        "changed since. Records go to .orchestrate/runs/<id>/.",
    )
    ap.add_argument("plan_file", nargs="?", metavar="PLAN")
    _selection(ap)
    ap.add_argument("--serial", metavar="N|N%", help="apply in batches of N hosts (or N%%)")
    ap.add_argument(
        "--max-fail-percent",
        type=int,
        metavar="P",
        help="stop when more than P%% of a batch failed",
    )
    ap.add_argument(
        "--yes", "-y", action="store_true", help="do not ask before touching every host"
    )
    _rollout_flags(ap)
    ap.add_argument(
        "--json",
        action="store_true",
        help="print the final summary (per host: ok, changed, failed, ...) as one JSON "
        "document instead of the table; the live display stays on stderr",
    )
    ap.set_defaults(run=_apply)


def _rollout_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--on-failure",
        choices=("rollback", "stop", "continue"),
        default="rollback",
        help="a host whose apply failed: rolled back to its previous generation (default), "
        "or kept as applied (stop: no later batch starts; continue: they do)",
    )
    ap.add_argument(
        "--confirm-timeout",
        type=int,
        metavar="S",
        help="seconds a changed host waits for the control node to reach it over a new SSH "
        "connection before it rolls the apply back by itself (default: each host's "
        "deploy.confirm_timeout, 30)",
    )
    ap.add_argument(
        "--no-magic-rollback",
        dest="magic_rollback",
        action="store_false",
        help="do not arm the hosts' own rollback (a warning names the hosts whose sshd, "
        "firewall, networking or VPN change)",
    )
    ap.add_argument(
        "--no-generations",
        dest="generations",
        action="store_false",
        help="keep no generation on the hosts (and so no magic rollback, no rollback of a "
        "failed host): an apply as plain Ansible runs it",
    )
    ap.add_argument(
        "--reboot",
        nargs="?",
        const="needed",
        choices=("needed", "always"),
        help="reboot the changed hosts that ask for it (/run/reboot-required, which packages "
        "and roles' handlers create), or with --reboot=always every changed host; each is "
        "waited for, then its checks run",
    )
    ap.add_argument(
        "--trial",
        metavar="DURATION",
        type=_duration,
        default=0,
        help="apply, and have the hosts undo it after DURATION (90s, 10m, 1h) unless "
        "`orchestrate confirm` is run first",
    )


def _generation_parsers(sub: Any) -> None:
    g = sub.add_parser(
        "generations",
        help="list a host's generations (what each apply and rollback changed)",
        description="A host's generations, as the host keeps them under "
        "/var/lib/orchestrate/generations: number, time, build, files and services changed, "
        "and which is current. A record changed on the host is refused (docs/rollout.md).",
    )
    g.add_argument("host", metavar="HOST")
    g.add_argument("--json", action="store_true", help=JSON_HELP)
    g.set_defaults(run=_generations)
    r = sub.add_parser(
        "rollback",
        help="bring hosts back to an earlier generation",
        description="Restore the selected hosts to generation N (default: the one before "
        "the current one's configuration): files with their content, owner and mode, files "
        "created since removed, services reloaded or restarted and their running state "
        "restored. The rollback is a new generation; the next plan compares the fleet with it.",
    )
    r.add_argument("--limit", "-l", metavar="SEL", help=SELECTION + " (default: every host)")
    r.add_argument("--to", type=int, metavar="N", help="the generation (0: before the first)")
    r.add_argument("--json", action="store_true", help=JSON_HELP)
    r.set_defaults(run=_rollback)
    c = sub.add_parser(
        "confirm",
        help="make a trial apply stay (apply --trial)",
        description="Confirm the selected hosts' trial applies before they undo themselves.",
    )
    c.add_argument("--limit", "-l", metavar="SEL", help=SELECTION + " (default: every host)")
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.set_defaults(run=_confirm)


def _duration(text: str) -> int:
    match = re.fullmatch(r"([1-9][0-9]{0,5})([smh]?)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 10m, 1h)")
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _testbed_parsers(sub: Any) -> None:
    tb = sub.add_parser(
        "testbed",
        help="local container hosts to try a fleet on",
        description="Containers (podman, locally built Debian images) running "
        "sshd and python3, one per fleet host; while they are up, plan and apply "
        "reach the hosts through them.",
    )
    tsub = tb.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)
    _testbed_up_parser(tsub)
    ts = tsub.add_parser("status", help="list containers and whether sshd answers")
    ts.add_argument("--json", action="store_true", help=JSON_HELP)
    ts.set_defaults(run=_testbed_status)
    tsub.add_parser("down", help="remove the containers and the record").set_defaults(
        run=_testbed_down
    )


def _testbed_up_parser(tsub: Any) -> None:
    tu = tsub.add_parser("up", help="start containers (all hosts, or --hosts)")
    tu.add_argument("--hosts", metavar="SEL", help="only these hosts: " + SELECTION)
    tu.add_argument(
        "--from-image",
        metavar="NAME",
        help="boot the built image entry NAME's root filesystems instead (systemd as init; "
        "`orchestrate image build NAME` first): a plan then shows what a machine made from "
        "the image would get on its first apply",
    )
    tu.add_argument(
        "--preload",
        action="store_true",
        help="start from an image with the packages the hosts' roles install already in it "
        "(built once per architecture and package list, renewed weekly): a first apply then "
        "only configures. For trying a fleet quickly; a plain testbed installs from scratch",
    )
    tu.set_defaults(run=_testbed_up)


def _test_parser(sub: Any) -> None:
    te = sub.add_parser(
        "test",
        help="run the roles' molecule scenarios in podman containers",
        description="Run `molecule test` (create, check, converge, idempotence, verify, "
        "destroy) for each shipped role with a molecule/ folder, or the roles named; the "
        "fleet's own roles/ take part when a fleet is found. Logs go to "
        ".orchestrate/test-logs/ (or ./test-logs without a fleet). Exit 3 when a role fails.",
    )
    te.add_argument("roles", nargs="*", metavar="ROLE")
    te.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="scenarios run side by side (1)"
    )
    te.set_defaults(run=_test)


def _completion_parser(sub: Any) -> None:
    co = sub.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        description="Print a completion script for subcommands and flags.",
    )
    co.add_argument("shell", choices=("bash", "zsh"))
    co.set_defaults(run=_completion)


def _schedule_parsers(sub: Any) -> None:
    sc = sub.add_parser(
        "schedule",
        help="scheduled plan/apply runs from cron",
        description="Install crontab entries that run plan or apply "
        "non-interactively. A scheduled run never overlaps another run of the "
        "fleet (it is skipped, exit 4), appends a JSON line to "
        ".orchestrate/schedule/runs.jsonl and writes a Prometheus textfile.",
    )
    ssub = sc.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    sa = ssub.add_parser(
        "add",
        help="add or replace a schedule",
        description="Add a schedule (or replace the one of that name): a crontab entry that "
        "runs the plan or apply written after `--`.",
    )
    sa.add_argument("name", metavar="NAME")
    sa.add_argument("--cron", required=True, metavar="EXPR", help="a cron expression")
    sa.add_argument(
        "--textfile-dir",
        metavar="DIR",
        help="where to write the .prom file (node_exporter's textfile collector "
        "directory; default .orchestrate/schedule)",
    )
    sa.set_defaults(run=_schedule_add)
    sl = ssub.add_parser("list", help="schedules, whether installed, last result")
    sl.add_argument("--json", action="store_true", help=JSON_HELP)
    sl.set_defaults(run=_schedule_list)
    sr = ssub.add_parser("remove", help="remove a schedule and its crontab entry")
    sr.add_argument("name", metavar="NAME")
    sr.set_defaults(run=_schedule_remove)
    su = ssub.add_parser("run", help="run a schedule now, as cron does")
    su.add_argument("name", metavar="NAME")
    su.set_defaults(run=_schedule_run)


SECRETS_HELP = """\
Secrets are SOPS files under secrets/ encrypted with age to the admins and to exactly the
hosts that use a secret in them (secrets/recipients.yaml lists both). A host decrypts its
secrets itself, with its own key, during apply: plaintext never passes through this machine.
The admin key is $SOPS_AGE_KEY_FILE, else ~/.config/sops/age/keys.txt.
"""


def _secrets_parsers(sub: Any) -> None:
    se = sub.add_parser(
        "secrets",
        help="age keys, recipients and SOPS-encrypted secrets",
        description=SECRETS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = se.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    kg = ssub.add_parser("keygen", help="a new admin key, added to the admins")
    kg.add_argument("--key-file", metavar="PATH", help="where to append the private key")
    kg.set_defaults(run=_secrets_keygen)
    _secrets_host_key_parser(ssub)
    ed = ssub.add_parser(
        "edit",
        help="decrypt into $EDITOR through sops, re-encrypt, replace atomically",
        description="Open secrets/FILE in $EDITOR through sops (a new file is created). "
        "The plaintext and the work copy live in a private folder (in /dev/shm when "
        "available, or in $ORCHESTRATE_SCRATCH_DIR) that orchestrate removes on every exit, "
        "also on error, Ctrl-C, SIGTERM or SIGHUP (exit 130).",
    )
    ed.add_argument("file", metavar="FILE", help="e.g. db, db.yaml or secrets/db.yaml")
    ed.set_defaults(run=_secrets_edit)
    en = ssub.add_parser("encrypt", help="encrypt a plaintext file under secrets/ in place")
    en.add_argument("file", metavar="FILE")
    en.set_defaults(run=_secrets_encrypt)
    ssub.add_parser(
        "rekey",
        help="re-encrypt each file to exactly the recipients it needs (rotating its data key)",
    ).set_defaults(run=_secrets_rekey)
    ck = ssub.add_parser(
        "check",
        help="exit 1 on plaintext files, missing secrets or wrong recipients",
    )
    ck.add_argument("--json", action="store_true", help=JSON_HELP)
    ck.set_defaults(run=_secrets_check)


def _secrets_host_key_parser(ssub: Any) -> None:
    hk = ssub.add_parser(
        "host-key",
        help="a host's age identity: new, imported, given, or read from the host",
        description="Record a host's age key in secrets/recipients.yaml. By default a new "
        "identity is made and kept in .orchestrate/host-keys/ (0600) until the host's next "
        "successful apply installs it at /var/lib/orchestrate/host.agekey.",
    )
    hk.add_argument("host", metavar="HOST")
    how = hk.add_mutually_exclusive_group()
    how.add_argument("--import", dest="import_file", metavar="FILE", help="an age key file")
    how.add_argument("--public", metavar="AGE1...", help="record this public key only")
    how.add_argument(
        "--from-host", action="store_true", help="read the key the host already has, over SSH"
    )
    hk.add_argument("--force", action="store_true", help="replace a recorded key")
    hk.set_defaults(run=_secrets_host_key)


def _secrets_keygen(args: argparse.Namespace) -> int:
    from orchestrator.secrets.commands import keygen

    keygen(_root(args), args.key_file, _err)
    return exitcodes.OK


def _secrets_host_key(args: argparse.Namespace) -> int:
    from orchestrator.secrets.commands import host_key

    host_key(
        _root(args),
        args.host,
        import_file=args.import_file,
        public=args.public,
        from_host=args.from_host,
        force=args.force,
        say=_err,
    )
    return exitcodes.OK


def _secrets_edit(args: argparse.Namespace) -> int:
    from orchestrator.secrets.commands import edit

    edit(_root(args), args.file, _err)
    return exitcodes.OK


def _secrets_encrypt(args: argparse.Namespace) -> int:
    from orchestrator.secrets.commands import encrypt

    encrypt(_root(args), args.file, _err)
    return exitcodes.OK


def _secrets_rekey(args: argparse.Namespace) -> int:
    from orchestrator.secrets.commands import rekey

    rekey(_root(args), _err)
    return exitcodes.OK


def _secrets_check(args: argparse.Namespace) -> int:
    from orchestrator.api import secrets_check

    checked = secrets_check(_root(args))
    report = checked.report
    if args.json:
        _print_json(shapes.secrets_check(report))
    elif report.problems:
        for p in report.problems:
            _err(p.render())
        _err(f"{len(report.problems)} problem(s) with the fleet's secrets")
    else:
        _err(
            f"secrets OK: {report.files} encrypted file(s), "
            f"{report.admins} admin(s), {report.host_keys} host key(s)"
        )
    return checked.exit_code


def _test(args: argparse.Namespace) -> int:
    from orchestrator.api import role_tests

    try:
        root: str | None = _root(args)
    except UsageError:
        root = None  # the shipped roles are tested without a fleet too
    tests = role_tests(root, args.roles, args.jobs, _err)
    for r in tests.failed:
        with open(r.log, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-3000:]
        _err(f"--- {r.role} failed; the end of {os.path.relpath(r.log)}:\n{tail}")
    passed = len(tests.results) - len(tests.failed)
    _err(f"{passed} of {len(tests.results)} role(s) passed")
    return tests.exit_code


def _root(args: argparse.Namespace) -> str:
    from orchestrator.paths import find_fleet

    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        raise UsageError("the working directory no longer exists; cd somewhere else") from None
    return find_fleet(args.fleet, dict(os.environ), cwd)


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(shapes.dumps(doc))


def _refuse(args: argparse.Namespace, message: str, code: int) -> int:
    """Nothing was done: the message on stderr, or as the errors document; ``code`` back."""
    if getattr(args, "json", False):
        _print_json(shapes.error_message(message, code))
    else:
        _err(message)
    return code


def _compile(args: argparse.Namespace) -> int:
    from orchestrator.api import compile_build

    start = time.perf_counter()
    warnings, result = compile_build(_root(args), args.out, full=args.full)
    took = time.perf_counter() - start
    if args.json:
        _print_json(shapes.compile_result(result, warnings, took))
        return exitcodes.OK
    for w in warnings:
        _err("warning: " + w.render())
    again = "" if result.evaluated is None else f" ({len(result.evaluated)} evaluated again)"
    _err(
        f"compiled {result.hosts} hosts{again}, {result.roles} generated roles, "
        f"{result.files} files into {os.path.relpath(result.out_dir)} in {took:.2f}s"
    )
    return exitcodes.OK


def _query(args: argparse.Namespace) -> int:
    from orchestrator.api import fleet_data
    from orchestrator.query import compile_expression, run_query

    compiled = compile_expression(args.expr)
    if args.old_output is not None:
        raise UsageError(
            f"query --output is now --format (write --format {one_line(args.old_output)}); "
            "-o/--out names the build folder, as for compile"
        )
    if args.out in ("json", "yaml", "lines") and not os.path.isdir(args.out):
        raise UsageError(
            f"-o names the build folder to read; for the output format write --format {args.out}"
        )
    answer = run_query(compiled, args.expr, fleet_data(_root(args), args.out))
    if answer.note:
        _err(answer.note)
    _print_value(answer.value, args.format)
    return exitcodes.OK


def _print_value(value: Any, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    elif fmt == "yaml":
        from orchestrator.yamlout import listing

        sys.stdout.write(listing(value))
    else:
        items = value if isinstance(value, list) else [value]
        for item in items:
            sys.stdout.write((item if isinstance(item, str) else json.dumps(item)) + "\n")


def _inventory(args: argparse.Namespace) -> int:
    from orchestrator.api import fresh_build

    build = fresh_build(_root(args), args.out)
    if args.list:
        path = os.path.join(build, "inventory.json")
    else:
        path = os.path.join(build, "inventory", "host_vars", f"{args.host}.json")
        if "/" in args.host or not os.path.isfile(path):
            raise UsageError(f"unknown host {args.host!r}")
    with open(path, encoding="utf-8") as fh:  # written by compile: pass it on as it is
        sys.stdout.write(fh.read())
    return exitcodes.OK


def _options(args: argparse.Namespace) -> int:
    from orchestrator.api import declarations
    from orchestrator.reporter.options import describe_options

    if args.library:
        from orchestrator.reporter.options import library_rows

        rows = [r for r in library_rows() if not args.path or r["path"].startswith(args.path)]
    else:
        ev, note = declarations(_root(args))
        if note:
            _err(note)
        rows = describe_options(ev, args.path)
    if args.json:
        _print_json(shapes.options(rows))
        return exitcodes.OK
    for row in rows:
        sys.stdout.write(f"{row['path']}\n    type: {row['type']}\n")
        if "default" in row:
            sys.stdout.write(f"    default: {json.dumps(row['default'])}\n")
        if row.get("description"):
            sys.stdout.write(f"    description: {row['description']}\n")
        sys.stdout.write(f"    declared in: {row['declared']}\n")
    return exitcodes.OK


def _explain(args: argparse.Namespace) -> int:
    from orchestrator.api import explained
    from orchestrator.reporter.explain import render_explain

    x, note = explained(_root(args), args.host, args.path)
    if note:
        _err(note)
    if args.json:
        _print_json(shapes.explanation(x))
        return exitcodes.OK
    sys.stdout.write(render_explain(x))
    return exitcodes.OK


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _deploy_options(args: argparse.Namespace) -> Any:
    from orchestrator.executor.deploy import Options

    return Options(
        limit=args.limit,
        forks=args.forks,
        serial=getattr(args, "serial", None),
        max_fail_percent=getattr(args, "max_fail_percent", None),
        verbosity=args.verbose,
        diff=args.diff,
        strategy=args.strategy,
        on_failure=getattr(args, "on_failure", "rollback"),
        magic_rollback=getattr(args, "magic_rollback", True),
        trial=getattr(args, "trial", 0),
        confirm_timeout=getattr(args, "confirm_timeout", None),
        reboot=getattr(args, "reboot", None),
        generations=getattr(args, "generations", True),
    )


def _interruptible() -> Any:
    """A flag set by Ctrl-C: the runner stops Ansible cleanly and records are kept."""
    import signal
    import threading

    flag = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        _err("interrupt: stopping Ansible (press Ctrl-C again to abort at once)")

    signal.signal(signal.SIGINT, handler)
    return flag


def _plan(args: argparse.Namespace) -> int:
    from orchestrator.api import plan
    from orchestrator.reporter.run import LiveProgress, render_plan

    root = _root(args)
    if args.out:
        from orchestrator.fsutil import user_file_target

        user_file_target(args.out)  # a device, FIFO or folder is refused before any host is asked
    flag = _interruptible()
    err = _console(stderr=True)
    with LiveProgress(err, [], "plan (check mode)") as live:
        planned = plan(
            root,
            _deploy_options(args),
            args.offline,
            live,
            flag,
            lambda m: err.print(m, markup=False, soft_wrap=True),
            save_to=args.out,
            detailed=args.detailed_exitcode,
        )
    if args.json:
        _print_json(shapes.plan(planned.plan))
    else:
        render_plan(_console(), planned.plan)
    return planned.exit_code


def _completion(args: argparse.Namespace) -> int:
    from orchestrator.reporter.completion import completion_script

    sys.stdout.write(completion_script(_parser(), args.shell))
    return exitcodes.OK


def _show(args: argparse.Namespace) -> int:
    from orchestrator.executor.deploy import Plan, load_plan
    from orchestrator.reporter.run import render_plan

    plan = Plan.from_json(load_plan(args.plan_file), args.plan_file)
    if args.json:
        _print_json(shapes.plan(plan))
    else:
        render_plan(_console(), plan)
    return exitcodes.OK


def _ask_to_apply(count: int) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(
            "applying to every host needs --yes (or a saved plan) when "
            "there is no terminal to ask on"
        )
    sys.stderr.write(f"apply to all {count} hosts? [y/N] ")  # stdout may be --json
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _apply(args: argparse.Namespace) -> int:
    from orchestrator.api import apply
    from orchestrator.reporter.run import LiveProgress, apply_table

    root = _root(args)
    flag = _interruptible()
    err = _console(stderr=True)
    with LiveProgress(err, [], "apply") as live:
        applied = apply(
            root,
            _deploy_options(args),
            args.plan_file,
            _ask_to_apply,
            live,
            flag,
            lambda m: err.print(m, markup=False, soft_wrap=True),
            yes=args.yes,
        )
    result = applied.result
    if result is None:
        return _refuse(args, "nothing applied", applied.exit_code)
    if args.json:
        _print_json(shapes.apply_result(result))
    else:
        _console().print(apply_table(result))
    _rollout_report(result)
    rel = os.path.relpath(result.run_dir)
    if result.interrupted:
        _err(f"interrupted; the run record is in {rel}")
    elif result.failed_hosts:
        for t in result.tasks:
            if t.status in ("failed", "unreachable"):
                _err(f"{t.host}: {t.status} at {t.task!r}: {t.message[:300]}")
        _err(f"failed or unreachable: {', '.join(result.failed_hosts)} (record: {rel})")
    return applied.exit_code


def _rollout_report(result: Any) -> None:
    for h, r in sorted(result.rollouts.items()):
        if r.outcome == "rolled back":
            _err(f"{h}: rolled back: {r.message}")
        elif r.outcome == "unhealthy":
            _err(f"{h}: applied, and a check failed (kept, --on-failure): {r.message}")
        elif r.outcome == "trial":
            _err(f"{h}: on trial (generation {r.generation}): {r.message}")
        elif r.outcome in ("not reached", "unreachable") and r.message:
            _err(f"{h}: {r.outcome}: {r.message}")


def _generations(args: argparse.Namespace) -> int:
    from orchestrator.api import generations

    listing = generations(_root(args), args.host)
    if args.json:
        _print_json(shapes.generations(args.host, listing))
        return exitcodes.OK
    for g in listing["generations"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g["time"]))
        what = g["kind"] if g["kind"] != "rollback" else f"rollback to {g['restores']}"
        state = g["status"].get("state", "")
        mark = "*" if g["current"] else " "
        print(f"{mark}{g['number']:>4}  {when}  {what:<16} build {g['build'] or '-':<16}  {state}")
        for f in g["files"]:
            print(f"        {f['change']:<8} {f['path']}")
        if g["services"]:
            print(f"        services: {', '.join(g['services'])}")
        for n in g["not_restored"]:
            print(f"        not restored: {n['path']} ({n['why']})")
    if not listing["generations"]:
        print(f"{args.host} has no generations yet (an apply that changes it makes the first)")
    return exitcodes.OK


def _rollback(args: argparse.Namespace) -> int:
    from orchestrator.api import rollback

    done = rollback(_root(args), args.limit, args.to)
    said = "rolled back to generation {restores} (recorded as {generation})"
    return _answers(args, "rollback", done, said)


def _confirm(args: argparse.Namespace) -> int:
    from orchestrator.api import confirm

    done = confirm(_root(args), args.limit)
    if not done.answers:
        _err("no selected host is on trial")
    return _answers(args, "confirm", done, "confirmed generation {generation}")


def _answers(args: argparse.Namespace, kind: str, done: Any, said: str) -> int:
    if args.json:
        _print_json(shapes.answers(kind, done.answers))
        return int(done.exit_code)
    for h, a in sorted(done.answers.items()):
        if "error" in a:
            _err(f"{h}: {a['error']}")
        elif a.get("confirmed") is False:
            _err(f"{h}: not confirmed: {a.get('state')}")
        else:
            print(f"{h}: " + said.format(**{"generation": None, "restores": None, **a}))
            for action in a.get("actions", []):
                print(f"  {action}")
            if a.get("note"):
                print(f"  note: {a['note']}")
    return int(done.exit_code)


def _testbed_up(args: argparse.Namespace) -> int:
    from orchestrator.api import testbed_up

    for name, h in testbed_up(_root(args), args.hosts, args.from_image, _err, args.preload):
        _err(f"{name}: {h.container} ({h.arch}) on {h.address}:{h.port}")
    return exitcodes.OK


def _image_parsers(sub: Any) -> None:
    im = sub.add_parser(
        "image",
        help="disk images built from hosts' configurations",
        description="The fleet's `images:` entries: one image per host of an entry "
        "(qcow2 and raw for x86_64, sd for aarch64 boards), under .orchestrate/images/.",
    )
    isub = im.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    il = isub.add_parser("list", help="every image: host, architecture, format, file, built")
    il.add_argument("--json", action="store_true", help=JSON_HELP)
    il.add_argument(
        "-o", "--out", metavar="DIR", help="where images are built (.orchestrate/images)"
    )
    il.set_defaults(run=_image_list)
    _image_build_parser(isub)
    _image_boot_parser(isub)


IMAGE_BUILD_HELP = """\
Build disk images from hosts' configurations, as root, on this machine (or, for a host with
deploy.build_on: remote, on the host itself over SSH as root; the file comes back here):

  1. bootstrap Debian (the fleet's stable suite) for the host's architecture; aarch64 runs
     through qemu-user. Cached under ~/.cache/orchestrate/images by suite, architecture and
     mirror, as is the next step by package set: a rebuild skips both.
  2. install the format's kernel and boot loader (qcow2/raw: UEFI systemd-boot) or firmware
     (sd: Raspberry Pi firmware from Debian), sshd and python3.
  3. apply the host's own roles into the root filesystem, as an apply would, through a chroot
     in namespaces of its own (nothing reaches this machine's network, name or processes).
  4. build the initramfs, remove what differs between builds, make the file systems and the
     partition table without mounting anything, convert to qcow2.

Same inputs, same sha256: dates come from SOURCE_DATE_EPOCH (default 2025-01-01), identifiers
from the fleet, image and host names. No secrets go in; the host's age key only with
`include_host_key: true`. Each image is written under a temporary name and renamed when done,
with NAME/manifest.json (file, sha256, inputs, where it was built)."""


def _image_build_parser(isub: Any) -> None:
    ib = isub.add_parser(
        "build",
        help="build image entries (one file per host) through the image-building role",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=IMAGE_BUILD_HELP,
    )
    ib.add_argument("names", nargs="*", metavar="NAME", help="image entries from fleet.yaml")
    ib.add_argument("--all", action="store_true", help="every image entry")
    ib.add_argument("-o", "--out", metavar="DIR", help="where to write them (.orchestrate/images)")
    ib.add_argument("--limit", metavar="SEL", help="only these hosts' files: " + SELECTION)
    ib.set_defaults(run=_image_build)


def _image_boot_parser(isub: Any) -> None:
    ibo = isub.add_parser(
        "boot",
        help="boot built x86_64 images under qemu until they are up and sshd answers",
        description="Boot each built image of entry NAME (qcow2 or raw) under "
        "qemu-system-x86_64 with UEFI firmware and software emulation, on a throwaway overlay; "
        "wait for the machine to say it is up on its serial console and for sshd to answer "
        "on the host's deploy port, then stop it. Needs qemu-system-x86 and ovmf. Takes about "
        "two minutes per image here. To plan against a machine made from an image, use "
        "`orchestrate testbed up --from-image NAME` instead.",
    )
    ibo.add_argument("name", metavar="NAME", help="an image entry (qcow2 or raw)")
    ibo.add_argument("--limit", metavar="SEL", help="only these hosts: " + SELECTION)
    ibo.add_argument("--timeout", type=float, default=600, help="seconds per image (600)")
    ibo.add_argument("--console-log", metavar="FILE", help="keep the serial console here")
    ibo.set_defaults(run=_image_boot)


def _image_list(args: argparse.Namespace) -> int:
    from orchestrator.api import evaluate_fleet
    from orchestrator.images.plan import image_rows, images_dir

    root = _root(args)
    rows = image_rows(evaluate_fleet(root), args.out or images_dir(root))
    if args.json:
        _print_json(shapes.image_list(rows))
        return exitcodes.OK
    if not rows:
        _err("this fleet declares no images (add an `images:` entry to fleet.yaml)")
    for r in rows:
        state = f"built {r['sha256'][:12]}" if r["sha256"] else "not built"
        sys.stdout.write(
            f"{r['image']}\t{r['host']}\t{r['arch']}\t{r['format']}\t{r['file']}\t{state}\n"
        )
    return exitcodes.OK


def _image_build(args: argparse.Namespace) -> int:
    import signal

    from orchestrator.api import build_images

    if bool(args.names) == bool(args.all):
        raise UsageError("name the image entries to build, or give --all (not both)")
    flag = _interruptible()
    signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    built = build_images(_root(args), args.names, args.limit, args.out, _err, flag)
    if built is None:
        _err("this fleet declares no images (add an `images:` entry to fleet.yaml)")
    for b in built or []:
        sys.stdout.write(f"{b.sha256}  {os.path.relpath(b.path)}\n")
    return exitcodes.OK


def _image_boot(args: argparse.Namespace) -> int:
    from orchestrator.api import boot_images

    for host, res in boot_images(
        _root(args), args.name, args.limit, args.timeout, args.console_log, _err
    ):
        sys.stdout.write(f"{host}\tup {res.ready_seconds:.0f}s\tssh {res.ssh_seconds:.0f}s\n")
    return exitcodes.OK


def _testbed_status(args: argparse.Namespace) -> int:
    from orchestrator.api import testbed_status

    status = testbed_status(_root(args))
    if args.json:
        _print_json(shapes.testbed_status(status.rows))
    elif not status.rows:
        _err("no testbed is up for this fleet")
    else:
        for name, h, running, answering in status.rows:
            state = shapes.testbed_state(running, answering)
            sys.stdout.write(f"{name}\t{h.container}\t{h.arch}\t{h.address}:{h.port}\t{state}\n")
    return status.exit_code


def _testbed_down(args: argparse.Namespace) -> int:
    from orchestrator.paths import state_dir
    from orchestrator.testbed import down

    removed = down(state_dir(_root(args)))
    _err(f"removed {len(removed)} container(s)")
    return exitcodes.OK


def _run_spec(mode: str | None, words: list[str]) -> Any:
    """A scheduled command line (`plan ...` or `apply ...`) parsed into the run it means."""
    from orchestrator.schedule import RunSpec
    from orchestrator.schedule.cron import MODES

    if mode not in MODES:
        raise UsageError("the scheduled command must be `plan ...` or `apply ...` after --")
    try:
        ns = _parser().parse_args([mode, *words])
    except SystemExit:
        raise UsageError(f"invalid arguments for scheduled {mode}: {' '.join(words)}") from None
    return RunSpec(
        mode,
        limit=ns.limit,
        forks=ns.forks,
        serial=getattr(ns, "serial", None),
        max_fail_percent=getattr(ns, "max_fail_percent", None),
        strategy=ns.strategy,
        offline=bool(getattr(ns, "offline", False)),
        plan_file=getattr(ns, "plan_file", None),
    )


def _schedule_add(args: argparse.Namespace) -> int:
    from orchestrator.schedule import add

    mode, words = (args.command[0], args.command[1:]) if args.command else (None, [])
    spec = _run_spec(mode, words)
    s = add(_root(args), args.name, args.cron, spec, words, args.textfile_dir)
    _err(f"scheduled {s.name}: {s.cron} -> {s.mode} {' '.join(s.args)}".rstrip())
    return exitcodes.OK


def _schedule_list(args: argparse.Namespace) -> int:
    from orchestrator.schedule import list_schedules

    rows = list_schedules(_root(args))
    if args.json:
        _print_json(shapes.schedule_list(rows))
        return exitcodes.OK
    for s in rows:
        last = s["last"]
        when = "never run" if not last else f"last exit {last['exit']} at {last['started']}"
        flag = "" if s["installed"] else " (NOT in crontab)"
        sys.stdout.write(
            f"{s['name']}\t{s['cron']}\t{s['mode']} {' '.join(s['args'])}\t{when}{flag}\n"
        )
    return exitcodes.OK


def _schedule_remove(args: argparse.Namespace) -> int:
    from orchestrator.schedule import remove

    remove(_root(args), args.name)
    _err(f"removed schedule {args.name}")
    return exitcodes.OK


def _schedule_run(args: argparse.Namespace) -> int:
    from orchestrator.api import schedule_run

    # _run_spec parses the words of a schedule recorded before its run was kept parsed
    ran = schedule_run(_root(args), args.name, _run_spec)
    # one line, as cron appends it to the schedule's log
    sys.stdout.write(shapes.dumps(shapes.schedule_run(ran.record), indent=None))
    return ran.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # `schedule add NAME --cron EXPR -- plan|apply ARGS`: what follows `--` is the command
    tail: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1 :]
    args = _parser().parse_args(words)
    args.command = tail
    run: Callable[[argparse.Namespace], int] = args.run
    as_json = bool(getattr(args, "json", False))  # --json: failures are a document too
    try:
        return run(args)
    except OrchestrateError as exc:
        if as_json:
            _print_json(shapes.error(exc))
        elif isinstance(exc, FleetErrors):
            for p in exc.problems:
                _err(p.render())
            notes = "".join(f"; {one_line(n)}" for n in exc.notes)
            _err(f"{len(exc.problems)} problem(s) found; nothing was written{notes}")
        else:
            # its lines as they are, but never a control character (they may quote user input)
            _err("error: " + "\n".join(one_line(line, 2000) for line in str(exc).splitlines()))
        return exc.exit_code
    except KeyboardInterrupt:
        if as_json:
            _print_json(shapes.error_message("interrupted", exitcodes.INTERRUPTED))
        else:
            _err("interrupted")
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        return exitcodes.OK  # a reader that stopped reading (`| head`) is not a failure
    except Exception as exc:  # the single boundary: no traceback reaches the user
        return _internal_error(exc, traceback.format_exc(), as_json)


def _internal_error(exc: Exception, trace: str, as_json: bool = False) -> int:
    """One line for the user; the traceback goes to a new private file of this user's."""
    try:
        log = _write_debug_log(trace)
    except Exception as e:  # the report of a crash must not crash
        first = (str(exc).splitlines() or [""])[0][:200]
        message = (
            f"internal error in orchestrate {__version__} ({type(exc).__name__}: {first}); "
            f"the traceback could not be kept ({e})"
        )
    else:
        message = f"internal error in orchestrate {__version__}; the traceback is in {log}"
    if as_json:
        _print_json(shapes.error_message(message, exitcodes.INTERNAL))
    else:
        _err(message)
    return exitcodes.INTERNAL


def _debug_log_dir() -> str:
    """$XDG_STATE_HOME/orchestrate (default ~/.local/state/orchestrate): per user, because in
    a world-writable /tmp another user could plant a link at the name or read the traceback."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "orchestrate")


def _write_debug_log(trace: str) -> str:
    """A new file (0600) per crash, named by time and pid, in a folder only the user enters."""
    from orchestrator.fsutil import new_private_file, private_folder

    folder = _debug_log_dir()
    os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)
    private_folder(folder)
    stem = time.strftime("crash-%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    text = f"orchestrate {__version__}\n{trace}"
    return new_private_file(folder, stem, ".log", text.encode(errors="replace"))


def entry() -> None:
    """The console script: like main(), but a large fleet's objects are not torn down one by one
    at exit (the OS reclaims the memory at once)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
