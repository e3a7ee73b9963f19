"""Controller side of orchestrate_generation: hand the module, at the beginning of an apply,
the script the host keeps (the module's own core), which a module cannot always read back
from itself (Mitogen loads it from memory)."""

from __future__ import annotations

import os
from typing import Any

from ansible.plugins.action import ActionBase

CORE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "module_utils",
    "orchestrate_generation_core.py",
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("action") == "begin":
            with open(CORE, encoding="utf-8") as fh:
                args["source"] = fh.read()
        res = self._execute_module(
            module_name="orchestrate_generation", module_args=args, task_vars=task_vars
        )
        res.pop("invocation", None)  # the script need not travel into every log
        result.update(res)
        return result
