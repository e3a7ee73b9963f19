"""A role's interface from its module's options: meta/argument_specs.yml and defaults/main.yml.

Generated roles get them in every build. The roles shipped under roles/ keep committed copies
(molecule runs those roles alone); `python3 -m orchestrator.compiler.rolespecs --write` rewrites
them from the library's modules and tests/test_library.py fails when they drift.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.compiler.argspec import arg_name, arg_spec
from orchestrator.compiler.unsafe import unsafe_yaml
from orchestrator.compiler.yamlout import yaml_bytes
from orchestrator.evaluator.expressions import plain
from orchestrator.loader.fleet import ModuleFile
from orchestrator.loader.library import library_modules
from orchestrator.paths import shipped_roles_dir


def interface_files(role: str, f: ModuleFile, description: str) -> dict[str, bytes]:
    args = {arg_name(role, d): arg_spec(d) for d in f.options}
    defaults = {
        arg_name(role, d): plain(d.schema["default"]) for d in f.options if "default" in d.schema
    }
    # fleet values (descriptions, choices, defaults) are data: Ansible templates neither
    spec = {"main": {"short_description": description, "options": args}}
    return {
        "meta/argument_specs.yml": yaml_bytes({"argument_specs": unsafe_yaml(spec)}),
        "defaults/main.yml": yaml_bytes(unsafe_yaml(defaults)),
    }


def shipped_interfaces() -> dict[str, bytes]:
    """Where (absolute) -> content: roles/ROLE/meta/argument_specs.yml and defaults/main.yml of
    every library module that names a shipped role, and the checkout's docs/options.md."""
    from orchestrator.reporter.options import library_markdown

    checkout = os.path.dirname(os.path.dirname(shipped_roles_dir()))
    out: dict[str, bytes] = {
        os.path.join(checkout, "docs", "options.md"): library_markdown().encode()
    }
    for name, f in library_modules().items():
        if f.role and f.tasks is None and f.options:
            files = interface_files(f.role, f, f"Role of the fleet module {name}.")
            out.update({os.path.join(shipped_roles_dir(), f.role, k): v for k, v in files.items()})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="rewrite the files that differ")
    args = p.parse_args()
    stale = []
    checkout = os.path.dirname(os.path.dirname(shipped_roles_dir()))
    for path, data in shipped_interfaces().items():
        try:
            with open(path, "rb") as fh:
                same = fh.read() == data
        except OSError:
            same = False
        if not same:
            stale.append(os.path.relpath(path, checkout))
            if args.write:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)
    for rel in stale:
        print(("wrote " if args.write else "stale: ") + rel)
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
