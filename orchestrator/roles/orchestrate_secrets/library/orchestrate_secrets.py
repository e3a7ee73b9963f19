#!/usr/bin/python
"""Decrypt SOPS files on the host with the host's age key; one file per secret."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: orchestrate_secrets
short_description: Install a host's secrets from SOPS files, decrypted on the host
description:
  - Decrypts each given SOPS file with sops and the host's own age key, in memory.
  - Writes every secret to a file of its own, with its owner, group and mode, in a new
    generation directory, then points /run/orchestrate/secrets at it with one atomic rename.
  - Reports which secrets changed, never their values; supports check mode.
options:
  files:
    description: Encrypted file name to its SOPS ciphertext.
    type: dict
    required: true
  secrets:
    description: The secrets to install (name, file, keys, owner, group, mode).
    type: list
    elements: dict
    required: true
  sops:
    description: Path of the sops binary on the host.
    type: path
    required: true
  key_file:
    description: The host's age identity.
    type: path
    required: true
  root:
    description: The path that always names the current generation.
    type: path
    default: /run/orchestrate/secrets
  keep:
    description:
      - Where the ciphertexts and the secrets' layout are kept (0600) for
        orchestrate-secrets.service, which installs the secrets again at boot.
    type: path
    default: /var/lib/orchestrate/secrets.json
  decrypt:
    description:
      - Decrypt and install now; false only keeps the state for the boot service (an image
        build, whose machine decrypts at its first boot).
    type: bool
    default: true
author: orchestrate
"""

EXAMPLES = r"""
- name: Install secrets
  orchestrate_secrets:
    files: {db.yaml: "..."}
    secrets: [{name: db/password, file: db.yaml, keys: [password], owner: root,
               group: root, mode: "0400"}]
    sops: /var/lib/orchestrate/sops-3.11.0
    key_file: /var/lib/orchestrate/host.agekey
"""

RETURN = r"""
changed_secrets:
  description: Names of secrets added, changed or removed (never values).
  type: list
  returned: always
generation:
  description: The generation directory now current.
  type: str
  returned: always
kept:
  description: Whether the state kept for the boot service changed (or would).
  type: bool
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.orchestrate_secrets_install import (
    SecretsError,
    current,
    desired,
    install,
    keep_state,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="dict", required=True, no_log=True),
            secrets=dict(type="list", elements="dict", required=True),
            sops=dict(type="path", required=True),
            key_file=dict(type="path", required=True),
            root=dict(type="path", default="/run/orchestrate/secrets"),
            keep=dict(type="path", default="/var/lib/orchestrate/secrets.json"),
            decrypt=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    kept = keep_state(
        p["keep"], p["files"], p["secrets"], p["sops"], p["key_file"], root, module.check_mode
    )
    if not p["decrypt"]:
        module.exit_json(changed=kept, kept=kept, changed_secrets=[], generation="")
    if p["secrets"] and module.check_mode:
        missing = [f for f in (p["key_file"], p["sops"]) if not os.path.exists(f)]
        if missing:  # a first delivery: apply installs the key and sops before decrypting
            names = sorted(spec["name"] for spec in p["secrets"])
            module.exit_json(
                changed=True,
                kept=kept,
                changed_secrets=names,
                generation="",
                msg="secrets that would change (first delivery): " + ", ".join(names),
            )
    try:
        wanted = desired(p["files"], p["secrets"], p["sops"], p["key_file"])
        have, gen = current(root)
        changed = sorted(n for n in set(wanted) | set(have) if wanted.get(n) != have.get(n))
        if not changed:
            module.exit_json(changed=kept, kept=kept, changed_secrets=[], generation=gen or "")
        if module.check_mode:
            module.exit_json(
                changed=True,
                kept=kept,
                changed_secrets=changed,
                generation=gen or "",
                msg="secrets that would change: " + ", ".join(changed),
            )
        new = install(root, wanted)
    except SecretsError as e:
        module.fail_json(msg=str(e))
    module.exit_json(
        changed=True,
        kept=kept,
        changed_secrets=changed,
        generation=new,
        msg="secrets changed: " + ", ".join(changed),
    )


if __name__ == "__main__":
    main()
