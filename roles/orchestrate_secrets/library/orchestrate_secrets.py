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
"""

import grp
import json
import os
import pwd
import shutil

from ansible.module_utils.basic import AnsibleModule


def _decrypt(module, name, ciphertext):
    env = {
        "SOPS_AGE_KEY_FILE": module.params["key_file"],
        "SOPS_AGE_SSH_PRIVATE_KEY_FILE": "/dev/null",
    }
    rc, out, err = module.run_command(
        [
            module.params["sops"],
            "decrypt",
            "--input-type",
            "yaml",
            "--output-type",
            "json",
            "/dev/stdin",
        ],
        data=ciphertext,
        environ_update=env,
    )
    if rc != 0:
        if "MAC mismatch" in err or "message authentication failed" in err:
            why = "failed SOPS's integrity check (MAC): it was changed outside sops"
        elif "Failed to get the data key" in err or "no master key" in err:
            why = (
                "this host's key cannot decrypt it (the host is not one of its recipients: "
                "run `orchestrate secrets rekey`)"
            )
        else:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            why = lines[0] if lines else "sops failed"
        module.fail_json(msg=f"secrets/{name}: {why}")
    return json.loads(out)


def _value(module, tree, spec):
    node = tree
    for key in spec["keys"]:
        if not isinstance(node, dict) or key not in node:
            module.fail_json(
                msg="secret {}: no such key in secrets/{}".format(spec["name"], spec["file"])
            )
        node = node[key]
    if isinstance(node, (dict, list)) or node is None:
        module.fail_json(msg="secret {} is not a single value".format(spec["name"]))
    if isinstance(node, str):
        return node.encode("utf-8")
    return json.dumps(node).encode("utf-8")


def _ids(module, spec):
    ids = []
    for kind, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        name = spec["owner" if kind == "user" else "group"]
        try:
            entry = lookup(name)
        except KeyError:
            msg = "secret {}: {} {!r} does not exist on this host"
            module.fail_json(msg=msg.format(spec["name"], kind, name))
        ids.append(entry[2])  # pw_uid / gr_gid
    return ids[0], ids[1], int(spec["mode"], 8)


def _current(root):
    """name -> (content, uid, gid, mode) of the generation root points at."""
    found = {}
    if not os.path.islink(root):
        return found, None
    gen = os.path.realpath(root)
    for base, _dirs, names in os.walk(gen):
        for n in names:
            path = os.path.join(base, n)
            st = os.lstat(path)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, gen)] = (
                    fh.read(),
                    st.st_uid,
                    st.st_gid,
                    st.st_mode & 0o7777,
                )
    return found, gen


def _write_generation(gens, desired):
    os.makedirs(gens, mode=0o751, exist_ok=True)
    os.chmod(gens, 0o751)
    numbers = [int(n) for n in os.listdir(gens) if n.isdigit()]
    gen = os.path.join(gens, str(max(numbers, default=0) + 1))
    os.mkdir(gen, 0o751)
    os.chmod(gen, 0o751)
    for name, (content, uid, gid, mode) in sorted(desired.items()):
        path = os.path.join(gen, name)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o751)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, content)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    for base, dirs, _names in os.walk(gen):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o751)
    return gen


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="dict", required=True, no_log=True),
            secrets=dict(type="list", elements="dict", required=True),
            sops=dict(type="path", required=True),
            key_file=dict(type="path", required=True),
            root=dict(type="path", default="/run/orchestrate/secrets"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    gens = root + ".d"
    desired = {}
    if p["secrets"] and module.check_mode:
        missing = [f for f in (p["key_file"], p["sops"]) if not os.path.exists(f)]
        if missing:  # a first delivery: apply installs the key and sops before decrypting
            names = sorted(spec["name"] for spec in p["secrets"])
            module.exit_json(
                changed=True,
                changed_secrets=names,
                generation="",
                msg="secrets that would change (first delivery): " + ", ".join(names),
            )
    if p["secrets"]:
        if not os.path.exists(p["key_file"]):
            module.fail_json(
                msg="no age key at {}: run `orchestrate secrets host-key HOST` on the control "
                "node, then apply (or `--from-host` for a host that has its own key)".format(
                    p["key_file"]
                )
            )
        trees = {}
        for spec in p["secrets"]:
            if spec["file"] not in trees:
                if spec["file"] not in p["files"]:
                    module.fail_json(
                        msg="secret {}: secrets/{} was not sent".format(spec["name"], spec["file"])
                    )
                trees[spec["file"]] = _decrypt(module, spec["file"], p["files"][spec["file"]])
            content = _value(module, trees[spec["file"]], spec)
            desired[spec["name"]] = (content, *_ids(module, spec))
    current, gen = _current(root)
    changed = sorted(n for n in set(desired) | set(current) if desired.get(n) != current.get(n))
    if not changed:
        module.exit_json(changed=False, changed_secrets=[], generation=gen or "")
    if module.check_mode:
        module.exit_json(
            changed=True,
            changed_secrets=changed,
            generation=gen or "",
            msg="secrets that would change: " + ", ".join(changed),
        )
    parent = os.path.dirname(root)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    if os.path.exists(root) and not os.path.islink(root):
        module.fail_json(msg=f"{root} exists and is not orchestrate's link; move it away")
    new = _write_generation(gens, desired)
    link = root + ".new"
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(new, link)
    os.replace(link, root)
    for n in os.listdir(gens):
        old = os.path.join(gens, n)
        if old != new:
            shutil.rmtree(old, ignore_errors=True)
    module.exit_json(
        changed=True,
        changed_secrets=changed,
        generation=new,
        msg="secrets changed: " + ", ".join(changed),
    )


if __name__ == "__main__":
    main()
