#!/usr/bin/python
"""Begin and end an apply's generation on the host (module_utils/orchestrate_generation_core)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: orchestrate_generation
short_description: Record what an apply changes on a host, so that it can be undone
description:
  - C(begin) stages the host's configuration trees and, with I(magic), arms a watchdog that
    rolls the apply back unless it is confirmed; it also installs the script the control node
    and the watchdog run (/var/lib/orchestrate/generation.py).
  - C(end) turns what changed since C(begin) into the host's next generation.
options:
  action:
    description: C(begin) or C(end).
    type: str
    required: true
    choices: [begin, end]
  run:
    description: The apply's run id.
    type: str
    required: true
  build:
    description: The digest of the build being applied.
    type: str
    default: ""
  timeout:
    description: Seconds the watchdog waits for the confirmation after the apply ended.
    type: int
    default: 30
  keep:
    description: How many generations are kept.
    type: int
    default: 10
  magic:
    description: Arm the watchdog.
    type: bool
    default: true
  trial:
    description: Seconds after which the apply is undone unless confirmed (0, no trial).
    type: int
    default: 0
  source:
    description: The script to keep on the host (the action plugin passes this module's core).
    type: str
    default: ""
author: orchestrate
"""

import os

from ansible.module_utils import orchestrate_generation_core as core
from ansible.module_utils.basic import AnsibleModule

SCRIPT = "/var/lib/orchestrate/generation.py"


def install_script(source: str) -> bool:
    """The module's own core (its action plugin passes it), kept on the host as the script
    that confirms and undoes."""
    try:
        with open(SCRIPT, encoding="utf-8") as fh:
            if fh.read() == source:
                return False
    except FileNotFoundError:
        pass
    tmp = SCRIPT + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(source)
    os.replace(tmp, SCRIPT)
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["begin", "end"]},
            "run": {"type": "str", "required": True},
            "build": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 30},
            "keep": {"type": "int", "default": 10},
            "magic": {"type": "bool", "default": True},
            "trial": {"type": "int", "default": 0},
            "source": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False)
    store = core.Store("/")
    try:
        if p["action"] == "begin":
            os.makedirs(store.state, mode=0o700, exist_ok=True)
            if p["source"]:
                install_script(p["source"])
            opts = {k: p[k] for k in ("timeout", "keep", "magic")}
            result = core.begin(store, p["run"], p["build"], {**opts, "script": SCRIPT})
        else:
            result = core.end(store, p["run"], p["trial"])
    except (core.GenerationError, OSError) as e:
        module.fail_json(msg=f"generation {p['action']}: {e}")
    # what the control node reads of it, under a key of its own
    module.exit_json(changed=bool(result.pop("changed")), orchestrate=result)


if __name__ == "__main__":
    main()
