#!/usr/bin/python3
"""Decrypt a host's secrets with its own age key and install them as a new generation under
/run/orchestrate/secrets.d, pointed at by /run/orchestrate/secrets in one rename.

Shared by the orchestrate_secrets module (at apply) and by orchestrate-secrets.service (at
boot: /run is empty after a reboot, and a machine made from an image has never been applied).
The service runs this file as a script on the host's own copy of what the last apply (or the
image build) kept: the ciphertexts, which secrets come from which keys, owners and modes.

    python3 secrets-at-boot.py STATE.json     # what orchestrate-secrets.service runs

Only the Python standard library: it runs where Ansible is not installed."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys

ROOT = "/run/orchestrate/secrets"


class SecretsError(Exception):
    """A secret cannot be installed; the message names it, never its value."""


def decrypt(sops, key_file, name, ciphertext):
    env = dict(
        os.environ,
        SOPS_AGE_KEY_FILE=key_file,
        SOPS_AGE_SSH_PRIVATE_KEY_FILE="/dev/null",
    )
    cmd = [sops, "decrypt", "--input-type", "yaml", "--output-type", "json", "/dev/stdin"]
    res = subprocess.run(cmd, input=ciphertext.encode("utf-8"), capture_output=True, env=env)
    if res.returncode != 0:
        err = res.stderr.decode("utf-8", "replace")
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
        raise SecretsError(f"secrets/{name}: {why}")
    return json.loads(res.stdout)


def value(tree, spec):
    node = tree
    for key in spec["keys"]:
        if not isinstance(node, dict) or key not in node:
            raise SecretsError(
                "secret {}: no such key in secrets/{}".format(spec["name"], spec["file"])
            )
        node = node[key]
    if isinstance(node, (dict, list)) or node is None:
        raise SecretsError("secret {} is not a single value".format(spec["name"]))
    if isinstance(node, str):
        return node.encode("utf-8")
    return json.dumps(node).encode("utf-8")


def ids(spec):
    found = []
    for kind, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        name = spec["owner" if kind == "user" else "group"]
        try:
            entry = lookup(name)
        except KeyError:
            msg = "secret {}: {} {!r} does not exist on this host"
            raise SecretsError(msg.format(spec["name"], kind, name)) from None
        found.append(entry[2])  # pw_uid / gr_gid
    return found[0], found[1], int(spec["mode"], 8)


def desired(files, secrets, sops, key_file):
    """name -> (content, uid, gid, mode) of every secret, decrypted in memory."""
    if secrets and not os.path.exists(key_file):
        raise SecretsError(
            f"no age key at {key_file}: run `orchestrate secrets host-key HOST` on the "
            "control node, then apply (or `--from-host` for a host that has its own key)"
        )
    trees = {}
    out = {}
    for spec in secrets:
        if spec["file"] not in trees:
            if spec["file"] not in files:
                raise SecretsError(
                    "secret {}: secrets/{} was not sent".format(spec["name"], spec["file"])
                )
            trees[spec["file"]] = decrypt(sops, key_file, spec["file"], files[spec["file"]])
        out[spec["name"]] = (value(trees[spec["file"]], spec), *ids(spec))
    return out


def current(root):
    """name -> (content, uid, gid, mode) of the generation root points at, and that folder."""
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


def _write_generation(gens, wanted):
    os.makedirs(gens, mode=0o751, exist_ok=True)
    os.chmod(gens, 0o751)
    numbers = [int(n) for n in os.listdir(gens) if n.isdigit()]
    gen = os.path.join(gens, str(max(numbers, default=0) + 1))
    os.mkdir(gen, 0o751)
    os.chmod(gen, 0o751)
    for name, (content, uid, gid, mode) in sorted(wanted.items()):
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


def install(root, wanted):
    """Make ``wanted`` the current generation (one rename); older generations go."""
    parent = os.path.dirname(root)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    if os.path.exists(root) and not os.path.islink(root):
        raise SecretsError(f"{root} exists and is not orchestrate's link; move it away")
    gens = root + ".d"
    new = _write_generation(gens, wanted)
    link = root + ".new"
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(new, link)
    os.replace(link, root)
    for n in os.listdir(gens):
        old = os.path.join(gens, n)
        if old != new:
            shutil.rmtree(old, ignore_errors=True)
    return new


def keep_state(path, files, secrets, sops, key_file, root, dry_run=False):
    """Keep what the boot service needs to install the same secrets again (ciphertexts only)
    at ``path`` (0600, replaced in one rename). Returns whether it changed (or would)."""
    state = {"files": files, "secrets": secrets, "sops": sops, "key_file": key_file, "root": root}
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except (OSError, ValueError):
        pass
    if dry_run:
        return True
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700)
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fchmod(fd, 0o600)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def main(argv):
    if len(argv) != 1:
        sys.stderr.write("usage: secrets-at-boot.py STATE.json\n")
        return 2
    try:
        with open(argv[0], encoding="utf-8") as fh:
            state = json.load(fh)
        root = state.get("root") or ROOT
        wanted = desired(state["files"], state["secrets"], state["sops"], state["key_file"])
        have, _gen = current(root)
        if wanted == have:
            print(f"orchestrate: {len(wanted)} secret(s) already in place under {root}")
            return 0
        install(root, wanted)
    except (OSError, ValueError, KeyError, SecretsError) as e:
        sys.stderr.write(f"orchestrate: secrets not installed: {e}\n")
        return 1
    print(f"orchestrate: installed {len(wanted)} secret(s) under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
