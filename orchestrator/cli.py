"""The command line: flags to one library call each, the single error boundary and exit codes.

Exit codes: 0 success; 1 invalid input or usage; 2 plan found changes (--detailed-exitcode);
3 failed or unreachable hosts; 4 the fleet's lock is held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator import __version__
from orchestrator.errors import FleetErrors, OrchestrateError, UsageError

EPILOG = """\
The fleet is --fleet DIR, else $ORCHESTRATE_FLEET, else the nearest folder above the working
directory that holds fleet.yaml. Errors name file:line:col; nothing is written when any is found.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrate",
        description="Compile a NixOS-style fleet of YAML modules into Ansible content, "
        "query it, explain it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"orchestrate {__version__}")
    p.add_argument("--fleet", metavar="DIR", help="the fleet folder (holds fleet.yaml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser(
        "compile",
        help="evaluate, validate and write the build",
        description="Evaluate every host, validate it against the option schemas "
        "and write inventory, roles, site.yml, ansible.cfg and a manifest to "
        ".orchestrate/build (or --out), atomically.",
    )
    c.add_argument("--out", metavar="DIR", help="where to write the build")
    c.set_defaults(run=_compile)

    q = sub.add_parser(
        "query",
        help="JMESPath over {hosts, images, groups, fleet}",
        description="Evaluate a JMESPath expression over the compiled fleet, e.g. "
        "orchestrate query 'hosts.*.deploy.host' or "
        "\"values(hosts)[?arch=='aarch64'].name\".",
    )
    q.add_argument("expr", metavar="EXPR")
    q.add_argument("--output", "-o", choices=("json", "yaml", "lines"), default="json")
    q.set_defaults(run=_query)

    i = sub.add_parser(
        "inventory",
        help="Ansible dynamic-inventory protocol",
        description="Use as `ansible-playbook -i 'orchestrate inventory' ...` "
        "through a wrapper script, or to inspect what Ansible will see.",
    )
    g = i.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="all groups and host variables")
    g.add_argument("--host", metavar="H", help="one host's variables")
    i.set_defaults(run=_inventory)

    o = sub.add_parser(
        "options",
        help="declared options: type, default, description, file",
        description="List the options the fleet's modules declare. PATH selects "
        "one option or every option below a prefix, e.g. services.prometheus.",
    )
    o.add_argument("path", nargs="?", metavar="PATH")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.set_defaults(run=_options)

    e = sub.add_parser(
        "explain",
        help="why an option has its value on a host",
        description="Show the final value of PATH on HOST, every definition "
        "(file:line, priority, condition) and why the winner won.",
    )
    e.add_argument("host", metavar="HOST")
    e.add_argument("path", metavar="PATH")
    e.set_defaults(run=_explain)
    return p


def _root(args: argparse.Namespace) -> str:
    from orchestrator.loader.fleet import find_fleet

    return find_fleet(args.fleet, dict(os.environ), os.getcwd())


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _compile(args: argparse.Namespace) -> int:
    from orchestrator.api import build

    start = time.perf_counter()
    ev, result = build(_root(args), args.out)
    for w in ev.warnings:
        _err("warning: " + w.render())
    took = time.perf_counter() - start
    _err(
        f"compiled {result.hosts} hosts, {result.roles} generated roles, {result.files} files "
        f"into {os.path.relpath(result.out_dir)} in {took:.2f}s"
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    import jmespath
    from jmespath import exceptions as jexc

    from orchestrator.api import fleet_data

    try:
        compiled = jmespath.compile(args.expr)
    except jexc.ParseError as exc:
        pos = (exc.lex_position or 0) + 1
        raise UsageError(f"<query>:1:{pos}: invalid JMESPath expression: {exc.msg}") from None
    data = fleet_data(_root(args))
    try:
        result = compiled.search(data)
    except jexc.JMESPathError as exc:
        raise UsageError(f"<query>: {exc}") from None
    _print_value(result, args.output)
    return 0


def _print_value(value: Any, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    elif fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(value, sort_keys=True, default_flow_style=False))
    else:
        items = value if isinstance(value, list) else [value]
        for item in items:
            sys.stdout.write((item if isinstance(item, str) else json.dumps(item)) + "\n")


def _inventory(args: argparse.Namespace) -> int:
    from orchestrator.api import fleet_data, inventory_list

    data = fleet_data(_root(args))
    doc = inventory_list(data)
    if args.list:
        json.dump(doc, sys.stdout, sort_keys=True)
    else:
        if args.host not in data["hosts"]:
            raise UsageError(f"unknown host {args.host!r}")
        json.dump(doc["_meta"]["hostvars"][args.host], sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def _options(args: argparse.Namespace) -> int:
    from orchestrator.api import evaluate_fleet
    from orchestrator.reporter.options import describe_options

    ev = evaluate_fleet(_root(args))
    rows = describe_options(ev, args.path)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return 0
    for row in rows:
        sys.stdout.write(f"{row['path']}\n    type: {row['type']}\n")
        if "default" in row:
            sys.stdout.write(f"    default: {json.dumps(row['default'])}\n")
        if row.get("description"):
            sys.stdout.write(f"    description: {row['description']}\n")
        sys.stdout.write(f"    declared in: {row['declared']}\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from orchestrator.api import evaluate_fleet
    from orchestrator.reporter.explain import explain, render_explain

    ev = evaluate_fleet(_root(args))
    sys.stdout.write(render_explain(explain(ev, args.host, args.path)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except FleetErrors as exc:
        for p in exc.problems:
            _err(p.render())
        _err(f"{len(exc.problems)} problem(s) found; nothing was written")
        return 1
    except OrchestrateError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # the single boundary: no traceback reaches the user
        log = os.path.join(tempfile.gettempdir(), "orchestrate-debug.log")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
        _err(f"internal error in orchestrate {__version__}; the traceback is in {log}")
        return 70


if __name__ == "__main__":
    sys.exit(main())
