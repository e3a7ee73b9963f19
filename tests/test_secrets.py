"""`orchestrate secrets` with the real sops binary and real age keys: keys and recipients, encrypt,
edit (and its cleanup when signalled or when sops is killed), rekey (recipients removed cannot
decrypt), check, tampering, hostile files under secrets/, and the compile-time errors."""

from __future__ import annotations

import json
import os
import re
import secrets as random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLED, REPO, Run, orchestrate, snapshot, write_tree

from orchestrator.errors import FleetErrors
from orchestrator.secrets import store
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
    kept = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith('"beta":'))
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
    monkeypatch.setenv("EDITOR", _editor(tmp_path, f"sed -i 's/db-secret/{token}&/' \"$1\"\n"))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
    assert r.code == 0, r.err
    assert decrypt(db, keyfile) == {"password": token + "db-secret"}
    # new in every run: a copy of this file, or of an earlier run's log, in /tmp holds no other
    new_value = (token + "db-secret").encode()
    assert decrypt(db, host_key(sfleet, "alpha")) is not None  # recipients kept
    assert not _plaintext_files_with(new_value)
    assert not [n for n in os.listdir(db.parent) if n.startswith(".edit-")]

    before = db.read_bytes()
    monkeypatch.setenv("EDITOR", _editor(tmp_path, 'echo scribble >> "$1"; exit 3\n'))
    r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
    assert r.code == 1 and "error:" in r.err and "Traceback" not in r.err
    assert db.read_bytes() == before
    assert not _plaintext_files_with(new_value)
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


@pytest.mark.ansible
def test_host_key_from_host_reads_the_key_line_through_ansible_runner(
    tmp_path: Path, keyfile: Path, cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--from-host` without a container: this machine is the host (a local connection, as
    the testbed's SSH settings would be given), its key file a file of the test's own."""
    from pyrage import x25519

    from orchestrator.executor import connection
    from orchestrator.secrets import commands

    root = write_tree(tmp_path / "fleet", {"fleet.yaml": FLEET, "app.yaml": "", "off.yaml": ""})
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    monkeypatch.setattr(connection, "connection_overrides", lambda _r, hosts: {hosts[0]: local})
    installed = tmp_path / "host.agekey"
    monkeypatch.setattr(commands, "HOST_KEY", str(installed))
    public = str(x25519.Identity.generate().to_public())
    installed.write_text(f"# age identity of host alpha\n# public key: {public}\nAGE-SECRET\n")
    r = cli("--fleet", str(root), "secrets", "host-key", "alpha", "--from-host")
    assert r.code == 0, r.err
    assert store.load_recipients(str(root)).hosts == {"alpha": public}
    installed.unlink()
    r = cli("--fleet", str(root), "secrets", "host-key", "alpha", "--from-host", "--force")
    assert r.code == 1
    assert f"could not read {installed} from alpha: sed: can't read {installed}" in r.err


def test_bad_recipients_file_is_a_precise_error(sfleet: Path, cli: Callable[..., Run]) -> None:
    (sfleet / "secrets/recipients.yaml").write_text("admins: [not-a-key]\nhosts: {}\n")
    before = snapshot(sfleet)
    r = cli("--fleet", str(sfleet), "compile")
    assert r.code == 1
    assert "secrets/recipients.yaml:1:10: 'not-a-key' is not an age public key" in r.err
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


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test-owned base for edit sessions' private folders (ORCHESTRATE_SCRATCH_DIR)."""
    base = tmp_path / "scratch"
    base.mkdir()
    monkeypatch.setenv("ORCHESTRATE_SCRATCH_DIR", str(base))
    return base


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["beside the fleet", "in /dev/shm"])
def test_edit_keeps_its_whole_session_in_a_private_folder_that_it_removes(
    where: str,
    sfleet: Path,
    tmp_path: Path,
    keyfile: Path,
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if where == "beside the fleet":
        base = tmp_path / "scratch"  # same file system: the work copy is renamed into place
        base.mkdir()
    else:
        if not os.access("/dev/shm", os.W_OK):
            pytest.skip("no writable /dev/shm")
        base = Path(tempfile.mkdtemp(dir="/dev/shm"))  # another file system: copied into place
    try:
        monkeypatch.setenv("ORCHESTRATE_SCRATCH_DIR", str(base))
        seen = tmp_path / "seen"
        secrets_folder = sfleet / "secrets"
        before = _everything_under(secrets_folder)
        monkeypatch.setenv("SEEN", str(seen))
        monkeypatch.setenv("SECRETS_FOLDER", str(secrets_folder))
        body = (
            'printf "%s\\n%s\\n" "$1" "$TMPDIR" > "$SEEN"\n'
            'stat -c %a "$TMPDIR" >> "$SEEN"\n'
            'ls -A "$TMPDIR" >> "$SEEN"\n'
            'ls -A "$SECRETS_FOLDER" > "$SEEN.secrets"\n'
            "sed -i 's/db-secret/db-changed/' \"$1\"\n"
        )
        monkeypatch.setenv("EDITOR", _editor(tmp_path, body))
        r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
        assert r.code == 0, r.err
        assert decrypt(sfleet / "secrets/db.yaml", keyfile) == {"password": "db-changed"}
        assert stat.S_IMODE((sfleet / "secrets/db.yaml").stat().st_mode) == 0o644
        plaintext, private, mode, *listing = seen.read_text().splitlines()
        # sops's plaintext and the ciphertext work copy were both in orchestrate's own folder
        assert Path(private).parent == base and Path(private).name.startswith("orchestrate-edit-")
        assert mode == "700"
        assert Path(plaintext).is_relative_to(private)
        assert "db.yaml" in listing
        # nothing of the session was in the fleet's folder during the edit, nor after it
        assert sorted((tmp_path / "seen.secrets").read_text().split()) == before
        assert _everything_under(secrets_folder) == before
        assert _everything_under(base) == []
    finally:
        if where != "beside the fleet":
            shutil.rmtree(base)


def _process_gone(pid: int) -> bool:
    """Dead: reaped, or a zombie (a container's init may never reap what it inherits)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _start_editing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> Path:
    """An $EDITOR that types a new secret into the decrypted file, then runs ``then`` and goes
    on "editing"; its pid is written to the returned file. What it types comes from the
    environment, so that it is on no disk unless orchestrate leaves it there."""
    pid_file = tmp_path / "editor.pid"
    monkeypatch.setenv("EDITOR_PID_FILE", str(pid_file))
    monkeypatch.setenv("TYPED", "typed-" + random.token_hex(8))
    body = (
        'echo $$ > "$EDITOR_PID_FILE"\n'
        'printf "new: %s\\n" "$TYPED" >> "$1"\n'
        "sops_pid=$PPID; orchestrate_pid=$(awk '{print $4}' /proc/$PPID/stat)\n"
        f"{then}\n"
        "exec sleep 30\n"
    )
    monkeypatch.setenv("EDITOR", _editor(tmp_path, body))
    return pid_file


def _session_left_nothing(
    sfleet: Path, scratch: Path, db_before: bytes, listing: list[str]
) -> None:
    assert (sfleet / "secrets/db.yaml").read_bytes() == db_before
    assert _everything_under(sfleet / "secrets") == listing
    assert _everything_under(scratch) == []
    # the decrypted file, with what the editor typed into it, is nowhere
    assert not _plaintext_files_with(os.environ["TYPED"].encode())


@pytest.mark.parametrize("sig", ["TERM", "HUP", "INT", "INT to the group"])
def test_a_signalled_edit_stops_sops_and_its_editor_and_removes_the_plaintext(
    sig: str, sfleet: Path, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_before = (sfleet / "secrets/db.yaml").read_bytes()
    listing = _everything_under(sfleet / "secrets")
    # "INT to the group" is a terminal's Ctrl-C: orchestrate, sops and the editor all get it
    # (orchestrate runs in a process group of its own here, so the test is not hit)
    target = "0" if sig == "INT to the group" else '"$orchestrate_pid"'
    pid_file = _start_editing(tmp_path, monkeypatch, f"kill -{sig.split()[0]} {target}")
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "--fleet", str(sfleet), "secrets", "edit", "db"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        process_group=0,
    )  # fmt: skip
    assert r.returncode == 130, r.stderr
    assert "interrupted" in r.stderr and "nothing saved" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - started < 20  # the editor's 30 s were not waited for
    assert _process_gone(int(pid_file.read_text()))  # the editor cannot write after cleanup
    _session_left_nothing(sfleet, scratch, db_before, listing)


def test_an_edit_whose_sops_is_killed_cleans_up_and_says_so(
    sfleet: Path, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_before = (sfleet / "secrets/db.yaml").read_bytes()
    listing = _everything_under(sfleet / "secrets")
    pid_file = _start_editing(tmp_path, monkeypatch, 'kill -KILL "$sops_pid"')
    r = orchestrate(sfleet, "secrets", "edit", "db", timeout=60)
    assert r.returncode == 1, r.stderr
    assert "error: " in r.stderr and "sops was killed (SIGKILL) before it saved" in r.stderr
    assert "Traceback" not in r.stderr
    assert _process_gone(int(pid_file.read_text()))  # the editor sops left behind is stopped
    _session_left_nothing(sfleet, scratch, db_before, listing)


def test_edit_restores_the_signal_handlers_it_replaced(
    sfleet: Path,
    tmp_path: Path,
    scratch: Path,
    cli: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = {s: (lambda signum, frame: None) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    previous = {s: signal.signal(s, h) for s, h in mine.items()}
    try:
        monkeypatch.setenv("EDITOR", _editor(tmp_path, "exit 0\n"))
        r = cli("--fleet", str(sfleet), "secrets", "edit", "db")
        assert r.code == 0 and "unchanged" in r.err
        assert {s: signal.getsignal(s) for s in mine} == mine
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


HOSTILE_DOCUMENTS = {
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    ),
    "10,000 deep": "k: " + "[" * 10_000 + "]" * 10_000 + "\n",
}


@pytest.mark.parametrize(
    ("doc", "file", "command"),
    [
        ("alias bomb", "x.yaml", "secrets check"),
        ("10,000 deep", "x.yaml", "secrets check"),
        ("alias bomb", "x.yaml", "compile"),
        ("10,000 deep", "recipients.yaml", "secrets check"),
        ("alias bomb", "recipients.yaml", "compile"),
    ],
)
def test_a_hostile_secrets_file_is_refused_fast_with_its_location(
    doc: str, file: str, command: str, sfleet: Path
) -> None:
    (sfleet / "secrets" / file).write_text(HOSTILE_DOCUMENTS[doc])
    started = time.monotonic()
    r = orchestrate(sfleet, *command.split(), timeout=60)
    assert time.monotonic() - started < 5
    assert r.returncode == 1 and "Traceback" not in r.stderr
    what = "expands to more than" if doc == "alias bomb" else "nesting deeper than"
    assert re.search(rf"secrets/{re.escape(file)}:\d+:\d+: [^\n]*{what}", r.stderr), r.stderr


@pytest.mark.parametrize("file", ["x.yaml", "recipients.yaml"])
@pytest.mark.parametrize("kind", ["FIFO", "link to /dev/zero"])
def test_a_fifo_or_device_under_secrets_is_refused_without_blocking(
    kind: str, file: str, sfleet: Path
) -> None:
    path = sfleet / "secrets" / file
    path.unlink(missing_ok=True)
    if kind == "FIFO":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    r = orchestrate(sfleet, "secrets", "check", timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    detail = "a FIFO" if kind == "FIFO" else "a character device"
    assert f"secrets/{file}:1:1: cannot read file: not a regular file ({detail}" in r.stderr


def test_reading_a_secrets_file_is_bounded_but_plaintext_stays_plaintext(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(store.MAX_FILE_BYTES + 1)  # sparse: refused by its size, not read
    with pytest.raises(
        FleetErrors, match=r"huge\.yaml:1:1: cannot read file: larger than 16,777,216 bytes"
    ):
        store.read_sops_file(str(huge))
    # not YAML, or not UTF-8, is plaintext (reported as such), not an error of its own
    for name, data in (("broken.yaml", b"a: [unclosed\n"), ("binary.yaml", b"\xff\xfe\x00")):
        (tmp_path / name).write_bytes(data)
        sf = store.read_sops_file(str(tmp_path / name))
        assert not sf.encrypted and not sf.problems


ODD_NAMES = ["true", "null", "0x1F", "on", "1e3", "~", "007", "alpha"]


def test_host_names_that_yaml_would_convert_round_trip_through_recipients(
    tmp_path: Path,
) -> None:
    import yaml
    from pyrage import x25519

    keys = [str(x25519.Identity.generate().to_public()) for _ in ODD_NAMES]
    hosts = dict(zip(ODD_NAMES, keys, strict=True))
    store.save_recipients(str(tmp_path), store.Recipients([keys[0]], hosts))
    back = store.load_recipients(str(tmp_path))
    assert back.hosts == hosts and back.admins == [keys[0]]
    on_disk = yaml.safe_load((tmp_path / "secrets/recipients.yaml").read_text())
    assert on_disk["hosts"] == hosts  # any YAML reader sees the same strings


def _recipients_problems(root: Path, text: str) -> str:
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets/recipients.yaml").write_text(text)
    with pytest.raises(FleetErrors) as exc:
        store.load_recipients(str(root))
    return str(exc.value)


def test_recipients_errors_point_at_the_bad_key_or_value(tmp_path: Path) -> None:
    from pyrage import x25519

    good = str(x25519.Identity.generate().to_public())
    text = (
        f'admins:\n  - "{good}"\n  - nope\n'
        f'hosts:\n  "alpha": "{good}"\n  on: "{good}"\n  beta: 42\n'
        "extra: 1\n"
    )
    msg = _recipients_problems(tmp_path, text)
    assert "recipients.yaml:3:5: 'nope' is not an age public key" in msg
    assert "recipients.yaml:6:3" not in msg  # an unquoted `on` is the host "on", as written
    assert "recipients.yaml:7:3: 42 is not an age public key" in msg
    assert "recipients.yaml:8:1: unknown key 'extra'" in msg
    assert ":1:1:" not in msg


def test_recipients_yaml_is_read_as_fleet_files_are(tmp_path: Path) -> None:
    """Through the located loader: its syntax errors, duplicate keys and unreadable bytes carry
    recipients.yaml:line:col, as a module's would."""
    msg = _recipients_problems(tmp_path, "admins: []\nhosts: {a: [\n")
    assert re.search(r"recipients\.yaml:\d+:\d+: invalid YAML", msg), msg
    msg = _recipients_problems(tmp_path, "admins: []\nhosts: {}\nadmins: []\n")
    assert "recipients.yaml:3:1: duplicate key 'admins'" in msg
    (tmp_path / "secrets" / "recipients.yaml").write_bytes(b"admins: [\xff]\n")
    with pytest.raises(FleetErrors, match=r"recipients\.yaml:1:1: not UTF-8 text"):
        store.load_recipients(str(tmp_path))


def test_recipients_errors_show_only_an_escaped_excerpt_of_a_value(tmp_path: Path) -> None:
    pasted = "AGE-SECRET-KEY-1" + "Q" * 40 + "\\e[31m" + "Z" * 500  # \e: ESC in YAML
    msg = _recipients_problems(tmp_path, f'admins: ["{pasted}"]\nhosts: {{}}\n')
    assert "recipients.yaml:1:10: 'AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQ'..." in msg
    assert "Q" * 30 not in msg and "ZZZ" not in msg and "\x1b" not in msg
    msg = _recipients_problems(tmp_path, 'admins: ["\\e[2Jx"]\nhosts: {}\n')
    assert "'\\x1b[2Jx' is not an age public key" in msg and "\x1b" not in msg


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


def test_plan_shows_where_a_secret_goes_never_its_value(
    sfleet: Path, cli: Callable[..., Run]
) -> None:
    r = cli("--fleet", str(sfleet), "plan", "--offline", "--limit", "alpha")
    assert r.code == 0, r.err
    assert '    + app.password_file: "/run/orchestrate/secrets/db/password"' in r.out.splitlines()
    saved = cli("--fleet", str(sfleet), "plan", "--offline", "--json").out
    assert "db-secret" not in r.out + r.err + saved and "alpha-secret" not in r.out + saved
    assert "/run/orchestrate/secrets/alpha/token" in saved
