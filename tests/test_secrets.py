"""`orchestrate secrets` with the real sops binary and real age keys: keys and recipients, encrypt,
edit, rekey (recipients removed cannot decrypt), check, tampering, and the compile-time errors."""

from __future__ import annotations

import json
import os
import secrets as random
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, REPO, Run, snapshot, write_tree

from orchestrator.secrets.sops import controller_binary

APP = """
options:
  app.enable: {type: boolean, default: true}
  app.password_file: {type: string}
  app.token_file: {type: string}
config:
  - when: config.app.enable
    set:
      app.password_file: ${secret('db/password')}
  - when: host.name == 'alpha'
    set:
      app.token_file: ${secret('alpha/token')}
secrets:
  db/password: {owner: nobody, group: nogroup, mode: "0440"}
"""

FLEET = """
name: sec
builders:
  x86_64: {arch: x86_64}
defaults: [app.yaml]
hosts:
  alpha: {builder: x86_64}
  beta: {builder: x86_64}
  gamma: {builder: x86_64, modules: [off.yaml]}
"""


def sops(*args: str, key: Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {"SOPS_AGE_KEY_FILE": str(key), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run(
        [controller_binary(), *args], input=data, capture_output=True, env=env, check=False
    )


def decrypt(path: Path, key: Path) -> dict[str, object] | None:
    r = sops("decrypt", "--output-type", "json", str(path), key=key)
    return json.loads(r.stdout) if r.returncode == 0 else None


def encrypt_from_memory(root: Path, name: str, plaintext: str) -> None:
    """A SOPS file made without plaintext touching the disk: stdin in, ciphertext out."""
    admins = _admins(root)
    out = sops(
        "encrypt", "--age", ",".join(admins), "--input-type", "yaml", "--output-type", "yaml",
        "/dev/stdin", key=Path(os.environ["SOPS_AGE_KEY_FILE"]), data=plaintext.encode(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (root / "secrets" / name).write_bytes(out.stdout)


def _admins(root: Path) -> list[str]:
    import yaml

    doc = yaml.safe_load((root / "secrets/recipients.yaml").read_text())
    return list(doc["admins"])


@pytest.fixture
def keyfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "admin" / "keys.txt"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(path))
    yield path


@pytest.fixture
def sfleet(tmp_path: Path, keyfile: Path, cli: Callable[..., Run]) -> Path:
    """A fleet with an admin, three host keys, and its two files encrypted by `rekey`."""
    root = write_tree(
        tmp_path / "fleet",
        {"fleet.yaml": FLEET, "app.yaml": APP, "off.yaml": "config:\n  app.enable: false\n"},
    )
    assert cli("--fleet", str(root), "secrets", "keygen").code == 0
    for h in ("alpha", "beta", "gamma"):
        assert cli("--fleet", str(root), "secrets", "host-key", h).code == 0
    encrypt_from_memory(root, "db.yaml", "password: db-secret\n")
    encrypt_from_memory(root, "alpha.yaml", "token: alpha-secret\n")
    r = cli("--fleet", str(root), "secrets", "rekey")
    assert r.code == 0, r.err
    return root


def host_key(root: Path, host: str) -> Path:
    return root / ".orchestrate" / "host-keys" / f"{host}.agekey"


def test_keygen_writes_a_private_key_file_and_records_the_admin(
    sfleet: Path, keyfile: Path
) -> None:
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    public = next(ln.split()[-1] for ln in keyfile.read_text().splitlines() if "public key" in ln)
    assert _admins(sfleet) == [public]
    for h in ("alpha", "beta", "gamma"):
        assert stat.S_IMODE(host_key(sfleet, h).stat().st_mode) == 0o600
    assert stat.S_IMODE(host_key(sfleet, "alpha").parent.stat().st_mode) == 0o700


def test_recipients_follow_the_hosts_that_reference_each_secret(
    sfleet: Path, keyfile: Path, cli: Callable[..., Run]
) -> None:
    db, tok = sfleet / "secrets/db.yaml", sfleet / "secrets/alpha.yaml"
    assert decrypt(db, host_key(sfleet, "alpha")) == {"password": "db-secret"}
    assert decrypt(db, host_key(sfleet, "beta")) == {"password": "db-secret"}
    assert decrypt(db, host_key(sfleet, "gamma")) is None  # gamma does not use it
    assert decrypt(tok, host_key(sfleet, "alpha")) == {"token": "alpha-secret"}
    assert decrypt(tok, host_key(sfleet, "beta")) is None  # alpha's own file
    assert decrypt(tok, keyfile) is not None  # the admin can read everything
    r = cli("--fleet", str(sfleet), "secrets", "check")
    assert r.code == 0, r.err
    assert "2 encrypted file(s), 1 admin(s), 3 host key(s)" in r.err


def test_rekey_after_a_host_stops_using_a_secret_locks_it_out(
    sfleet: Path, cli: Callable[..., Run]
) -> None:
    db = sfleet / "secrets/db.yaml"
    beta_key = host_key(sfleet, "beta")
    before = db.read_bytes()
    (sfleet / "fleet.yaml").write_text(
        FLEET.replace("beta: {builder: x86_64}", "beta: {builder: x86_64, modules: [off.yaml]}")
    )
    r = cli("--fleet", str(sfleet), "secrets", "check")
    assert r.code == 1 and "secrets/db.yaml: recipients differ" in r.err and "beta" in r.err
    r = cli("--fleet", str(sfleet), "secrets", "rekey")
    assert r.code == 0, r.err
    assert "db.yaml: +0 -1 recipient(s), data key rotated" in r.err
    assert decrypt(db, beta_key) is None
    assert decrypt(db, host_key(sfleet, "alpha")) == {"password": "db-secret"}
    # the old data key is gone too: the new file shares no encrypted value with the old one
    old_values = {ln.split(": ", 1)[1] for ln in before.decode().splitlines() if "ENC[" in ln}
    assert not any(v in db.read_text() for v in old_values)
    assert cli("--fleet", str(sfleet), "secrets", "check").code == 0


def test_check_fails_on_plaintext_missing_secrets_and_hosts_without_keys(
    sfleet: Path, cli: Callable[..., Run]
) -> None:
    (sfleet / "secrets/notes.yaml").write_text("api_key: plain-text-here\n")
    (sfleet / "app.yaml").write_text(APP.replace("'alpha/token'", "'alpha/nope'"))
    r = cli("--fleet", str(sfleet), "secrets", "check")
    assert r.code == 1
    assert "secrets/notes.yaml:1:1: not SOPS-encrypted" in r.err
    assert (
        "host alpha uses secret 'alpha/nope' but secrets/alpha.yaml has no value at nope" in r.err
    )
    # compile refuses the same fleet, naming the problems, and writes nothing
    before = snapshot(sfleet)
    r = cli("--fleet", str(sfleet), "compile")
    assert r.code == 1 and "not SOPS-encrypted" in r.err and "alpha/nope" in r.err
    assert snapshot(sfleet) == before


def test_a_host_using_secrets_without_a_key_is_a_compile_error(
    sfleet: Path, cli: Callable[..., Run]
) -> None:
    text = (sfleet / "secrets/recipients.yaml").read_text()
    kept = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("beta:"))
    (sfleet / "secrets/recipients.yaml").write_text(kept + "\n")
    r = cli("--fleet", str(sfleet), "compile")
    assert r.code == 1
    assert "host beta uses secrets but has no age key" in r.err
    assert "orchestrate secrets host-key beta" in r.err


def test_encrypt_in_place_and_refuse_twice(sfleet: Path, cli: Callable[..., Run]) -> None:
    path = sfleet / "secrets/extra.yaml"
    path.write_text("x: 1\n")
    r = cli("--fleet", str(sfleet), "secrets", "encrypt", "secrets/extra.yaml", cwd=sfleet)
    assert r.code == 0, r.err
    assert "ENC[" in path.read_text() and "x: 1" not in path.read_text()
    r = cli("--fleet", str(sfleet), "secrets", "encrypt", "extra")
    assert r.code == 1 and "already encrypted" in r.err


def _editor(tmp_path: Path, body: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def _plaintext_files_with(text: bytes) -> list[str]:
    found = []
    for folder in ("/dev/shm", "/tmp"):
        for base, _dirs, names in os.walk(folder):
            for n in names:
                p = os.path.join(base, n)
                try:
                    if os.path.isfile(p) and os.path.getsize(p) < 5_000_000:
                        with open(p, "rb") as fh:
                            if text in fh.read():
                                found.append(p)
                except OSError:
                    continue
    return found


def test_edit_reencrypts_and_leaves_no_plaintext_even_when_the_editor_fails(
    sfleet: Path,
    tmp_path: Path,
    keyfile: Path,
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = sfleet / "secrets/db.yaml"
    token = "edited-" + random.token_hex(8)
    # the editor derives the new value from the old one, so the new plaintext is on no disk
    monkeypatch.setenv("EDITOR", _editor(tmp_path, f"sed -i 's/db-secret/{token[:7]}&/' \"$1\"\n"))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
    assert r.code == 0, r.err
    assert decrypt(db, keyfile) == {"password": token[:7] + "db-secret"}
    assert decrypt(db, host_key(sfleet, "alpha")) is not None  # recipients kept
    assert not _plaintext_files_with(b"edited-db-secret")
    assert not [n for n in os.listdir(db.parent) if n.startswith(".edit-")]

    before = db.read_bytes()
    monkeypatch.setenv("EDITOR", _editor(tmp_path, 'echo scribble >> "$1"; exit 3\n'))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
    assert r.code == 1 and "error:" in r.err and "Traceback" not in r.err
    assert db.read_bytes() == before
    assert not _plaintext_files_with(b"edited-db-secret")
    assert not [n for n in os.listdir(db.parent) if n.startswith(".edit-")]


def test_a_tampered_file_is_rejected_by_the_sops_mac(
    sfleet: Path,
    tmp_path: Path,
    keyfile: Path,
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = sfleet / "secrets/db.yaml"
    text = db.read_text()
    start = text.index("data:") + 5
    flipped = "A" if text[start] != "A" else "B"
    db.write_text(text[:start] + flipped + text[start + 1 :])
    tampered = db.read_bytes()
    monkeypatch.setenv("EDITOR", _editor(tmp_path, "exit 0\n"))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
    assert r.code == 1
    assert "integrity check (MAC)" in r.err and "secrets/db.yaml" in r.err
    assert db.read_bytes() == tampered
    assert sops("decrypt", str(db), key=keyfile).returncode != 0


def test_host_key_bad_inputs(sfleet: Path, tmp_path: Path, cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(sfleet), "secrets", "host-key", "nosuch")
    assert r.code == 1 and "unknown host 'nosuch'" in r.err
    r = cli("--fleet", str(sfleet), "secrets", "host-key", "alpha")
    assert r.code == 1 and "already has key" in r.err and "--force" in r.err
    r = cli(
        "--fleet", str(sfleet), "secrets", "host-key", "alpha", "--public", "age1nope", "--force"
    )
    assert r.code == 1 and "not an age public key" in r.err
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    r = cli(
        "--fleet", str(sfleet), "secrets", "host-key", "alpha", "--import", str(junk), "--force"
    )
    assert r.code == 1 and "no age identity" in r.err


def test_bad_recipients_file_is_a_precise_error(sfleet: Path, cli: Callable[..., Run]) -> None:
    (sfleet / "secrets/recipients.yaml").write_text("admins: [not-a-key]\nhosts: {}\n")
    before = snapshot(sfleet)
    r = cli("--fleet", str(sfleet), "compile")
    assert r.code == 1
    assert "secrets/recipients.yaml:1:1: 'not-a-key' is not an age public key" in r.err
    assert snapshot(sfleet) == before


def test_edit_creates_a_new_file_encrypted_to_the_admins(
    sfleet: Path,
    tmp_path: Path,
    keyfile: Path,
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDITOR", _editor(tmp_path, "printf 'k: v\\n' > \"$1\"\n"))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "fresh")
    assert r.code == 0, r.err
    assert decrypt(sfleet / "secrets/fresh.yaml", keyfile) == {"k": "v"}
    assert cli("--fleet", str(sfleet), "secrets", "check").code == 0


def test_committed_plaintext_fails_the_bundled_check_as_ci_runs_it(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "inv"
    shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(".orchestrate"))
    cmd = [sys.executable, "-m", "orchestrator.cli", "--fleet", str(root), "secrets", "check"]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (root / "secrets/leak.yaml").write_text("password: oops\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "secrets/leak.yaml:1:1: not SOPS-encrypted" in bad.stderr
    # and .ci/run runs exactly this check on the repository's own fleet
    assert "secrets check" in (REPO / "README.md").read_text()


INSTALLER = REPO / "roles/orchestrate_secrets/module_utils/orchestrate_secrets_install.py"


def _installer() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("orchestrate_secrets_install", INSTALLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_host_side_names_a_missing_owner_or_group() -> None:
    core: Any = _installer()
    entry = {"name": "db/password", "owner": "root", "group": "root", "mode": "0440"}
    assert core.ids(entry) == (0, 0, 0o440)
    for field, kind in (("owner", "user"), ("group", "group")):
        with pytest.raises(core.SecretsError, match=f"db/password: {kind} 'nobody-here' does not"):
            core.ids({**entry, field: "nobody-here"})


def test_the_boot_service_installs_the_kept_secrets_again(tmp_path: Path) -> None:
    """What orchestrate-secrets.service runs after a reboot (or at an image's first boot): the
    host-side code as a script on the state an apply kept, with the real sops and an age key."""
    from pyrage import x25519

    ident = x25519.Identity.generate()
    key = tmp_path / "host.agekey"
    key.write_text(str(ident) + "\n")
    out = sops(
        "encrypt", "--age", str(ident.to_public()), "--input-type", "yaml", "--output-type",
        "yaml", "/dev/stdin", key=key, data=b"db: {password: hunter2}\nport: 5432\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    root = tmp_path / "run/orchestrate/secrets"
    state = {
        "files": {"app.yaml": out.stdout.decode()},
        "secrets": [
            {"name": "db/password", "file": "app.yaml", "keys": ["db", "password"],
             "owner": "root", "group": "root", "mode": "0440"},
            {"name": "port", "file": "app.yaml", "keys": ["port"],
             "owner": "nobody", "group": "nogroup", "mode": "0400"},
        ],
        "sops": controller_binary(),
        "key_file": str(key),
        "root": str(root),
    }  # fmt: skip
    kept = tmp_path / "secrets.json"
    kept.write_text(json.dumps(state))

    def boot() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(INSTALLER), str(kept)]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    first = boot()
    assert first.returncode == 0, first.stderr
    assert "installed 2 secret(s)" in first.stdout
    assert (root / "db/password").read_bytes() == b"hunter2"
    assert (root / "port").read_bytes() == b"5432"
    st = (root / "port").stat()
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == 65534
    generation = os.path.realpath(root)
    again = boot()
    assert again.returncode == 0 and "already in place" in again.stdout
    assert os.path.realpath(root) == generation  # nothing rewritten
    # a changed ciphertext is refused by sops's MAC; the installed secrets stay as they were
    tampered = json.loads(kept.read_text())
    tampered["files"]["app.yaml"] = tampered["files"]["app.yaml"].replace("ENC[", "ENC[A", 1)
    kept.write_text(json.dumps(tampered))
    bad = boot()
    assert bad.returncode == 1
    assert "secrets not installed: secrets/app.yaml:" in bad.stderr
    assert "hunter2" not in bad.stderr + bad.stdout
    assert os.path.realpath(root) == generation
    assert (root / "db/password").read_bytes() == b"hunter2"
    kept.write_text("{not json")
    broken = boot()
    assert broken.returncode == 1 and "secrets not installed" in broken.stderr
