# An Ansible callback plugin loaded by orchestrate's runs. ansible-runner's events leave out the
# result of a skipped task; plan needs its reason to tell "skipped by a condition" from "check
# mode cannot preview this", so this plugin writes each skip's message to a JSON-lines file.
from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: orchestrate_skips
type: aggregate
short_description: record why tasks were skipped (for orchestrate plan)
description: Writes host, task uuid and message of every skipped task to $ORCHESTRATE_SKIPS.
requirements: [ORCHESTRATE_SKIPS set in the environment]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "orchestrate_skips"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_skipped(self, result: Any) -> None:
        path = os.environ.get("ORCHESTRATE_SKIPS")
        if not path:
            return
        res = result._result or {}
        record = {
            "host": result._host.get_name(),
            "task_uuid": str(result._task._uuid),
            "msg": str(res.get("msg") or res.get("skip_reason") or ""),
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
