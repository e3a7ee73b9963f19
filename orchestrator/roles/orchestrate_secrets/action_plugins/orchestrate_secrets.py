"""Controller side of orchestrate_secrets: read the encrypted files named by the task from the
build and hand their ciphertext to the module on the host. Nothing here can decrypt."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        ("source", "files", "secrets", "sops", "key_file", "root", "keep", "decrypt")
    )

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        source = args.pop("source")
        contents = {}
        for name in args.pop("files"):
            path = os.path.join(source, name)
            try:
                with open(path, encoding="utf-8") as fh:
                    contents[name] = fh.read()
            except OSError as e:
                raise AnsibleActionFail(f"cannot read encrypted file {path}: {e}") from e
        args["files"] = contents
        res = self._execute_module(
            module_name="orchestrate_secrets", module_args=args, task_vars=task_vars
        )
        res.pop("invocation", None)  # the ciphertext need not travel into every log
        result.update(res)
        return result
