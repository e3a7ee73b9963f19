"""`orchestrate secrets ...`: keys, recipients and the SOPS files of a fleet."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestrator.errors import FleetErrors, Problem, UsageError
from orchestrator.fsutil import (
    atomic_move,
    atomic_write,
    read_regular,
    user_file_target,
    write_user_file,
)
from orchestrator.secrets import sops
from orchestrator.secrets.sops import SecretsError
from orchestrator.secrets.store import (
    AGE_RE,
    RECIPIENTS,
    SecretsPlan,
    load_recipients,
    pending_key,
    pending_keys_dir,
    plan_for,
    read_sops_file,
    save_recipients,
    secret_files,
    secrets_dir,
)

Say = Callable[[str], None]
HOST_KEY = "/var/lib/orchestrate/host.agekey"


def _identity_text(identity: object, public: str, what: str) -> str:
    return f"# {what}\n# public key: {public}\n{identity}\n"


def _fleet_plan(root: str) -> SecretsPlan:
    from orchestrator.pipeline import evaluate_fleet

    return plan_for(evaluate_fleet(root))


def _read_user_file(path: str) -> bytes:
    """A small file the user names (a key file): regular files only, never blocking."""
    try:
        return read_regular(path, 1 << 20)[0]
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e})") from None


def keygen(root: str, key_file: str | None, say: Say) -> str:
    """A new admin identity, appended to the admin key file and added to the admins."""
    import pyrage

    path = key_file or sops.admin_key_file()
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    old = b""
    target = user_file_target(path)  # a FIFO, folder or device is refused before any read
    if os.path.exists(target):
        old = _read_user_file(target)
        if old and not old.endswith(b"\n"):
            old += b"\n"
    text = _identity_text(identity, public, "orchestrate admin key")
    write_user_file(path, old + text.encode(), mode=0o600)
    r = load_recipients(root)
    r.admins.append(public)
    save_recipients(root, r)
    say(f"admin key {public}")
    say(f"private key appended to {path} (keep it out of version control)")
    if secret_files(root):
        say("existing files are not encrypted to it yet: run `orchestrate secrets rekey`")
    return public


def host_key(
    root: str,
    host: str,
    *,
    import_file: str | None,
    public: str | None,
    from_host: bool,
    force: bool,
    say: Say,
) -> str:
    """Record a host's age identity: new (kept until its next apply delivers it), imported
    from a key file, given as a public key, or read from the host itself."""
    import pyrage

    from orchestrator.loader.fleet import load_fleet

    spec = load_fleet(root)
    if host not in spec.hosts:
        raise UsageError(f"unknown host {host!r} (hosts: {', '.join(sorted(spec.hosts))})")
    r = load_recipients(root)
    if host in r.hosts and not force:
        raise UsageError(
            f"host {host} already has key {r.hosts[host]}; pass --force to replace it "
            "(then `orchestrate secrets rekey`)"
        )
    private_text: str | None = None
    if import_file:
        text = _read_user_file(import_file).decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]
        try:
            identity = pyrage.x25519.Identity.from_str(lines[0])
        except (IndexError, ValueError, pyrage.IdentityError):
            # never the error's text: it could quote the key
            raise UsageError(f"{import_file}: no age identity in it") from None
        public = str(identity.to_public())
        private_text = _identity_text(identity, public, f"age identity of host {host}")
    elif public:
        if not AGE_RE.fullmatch(public):
            raise UsageError(f"{public!r} is not an age public key (age1...)")
    elif from_host:
        public = read_public_from_host(root, host)
    else:
        identity = pyrage.x25519.Identity.generate()
        public = str(identity.to_public())
        private_text = _identity_text(identity, public, f"age identity of host {host}")
    if private_text is not None:
        folder = pending_keys_dir(root)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        atomic_write(os.path.join(folder, f"{host}.agekey"), private_text.encode(), mode=0o600)
        say(f"host {host}: key {public}; its next successful apply installs it at {HOST_KEY}")
    else:
        stale = pending_key(root, host)
        if stale:
            os.unlink(stale)
        say(f"host {host}: key {public} recorded")
    r.hosts[host] = public
    save_recipients(root, r)
    say("run `orchestrate secrets rekey` so that the files it uses are encrypted to it")
    return public


def read_public_from_host(root: str, host: str) -> str:
    """The public line of the key already installed on a host, read over SSH by Ansible."""
    from orchestrator.executor.connection import connection_overrides
    from orchestrator.executor.runner import run_command
    from orchestrator.pipeline import fresh_build

    build = fresh_build(root)
    extra = connection_overrides(root, [host]).get(host, {})
    with tempfile.TemporaryDirectory(prefix="orchestrate-host-key-") as run_dir:
        done = run_command(build, run_dir, host, f"sed -n 's/^# public key: //p' {HOST_KEY}", extra)
    words = [w for w in done.stdout.split() if AGE_RE.fullmatch(w)]
    if done.status != "ok" or not words:
        detail = (done.message or done.stdout).strip().splitlines()
        raise SecretsError(
            f"could not read {HOST_KEY} from {host}: {detail[-1] if detail else 'no output'}"
        )
    return words[-1]


def resolve_file(root: str, name: str) -> str:
    """FILE as given (`db`, `db.yaml`, `secrets/db.yaml` or a path) -> its path under secrets/."""
    base = secrets_dir(root)
    candidates = [name] if os.path.isabs(name) else [os.path.join(os.getcwd(), name)]
    candidates.append(os.path.join(base, name))
    for c in candidates:
        if os.path.exists(c):
            path = os.path.abspath(c)
            break
    else:
        rel = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        path = os.path.join(base, os.path.basename(rel))
    if os.path.dirname(path) != base:
        raise UsageError(f"{name}: secrets live directly in {base}")
    if os.path.basename(path) == RECIPIENTS:
        raise UsageError(f"{RECIPIENTS} is not a secrets file")
    return path


def _file_recipients(plan: SecretsPlan, path: str) -> list[str]:
    needed = plan.needed_recipients(os.path.basename(path))
    if not plan.recipients.admins:
        raise SecretsError("no admin key yet: run `orchestrate secrets keygen` first")
    return needed


def encrypt(root: str, name: str, say: Say) -> None:
    """Encrypt a plaintext file in place, to exactly the recipients it needs."""
    path = resolve_file(root, name)
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist")
    if read_sops_file(path).encrypted:
        raise UsageError(f"{os.path.relpath(path)} is already encrypted")
    plan = _fleet_plan(root)
    recipients = _file_recipients(plan, path)
    ciphertext = sops.run(
        ["encrypt", "--age", ",".join(recipients), "--input-type", "yaml",
         "--output-type", "yaml", path],
        path,
    )  # fmt: skip
    atomic_write(path, ciphertext, mode=0o644)
    say(f"{os.path.relpath(path)}: encrypted to {len(recipients)} recipient(s)")


SCRATCH_ENV = "ORCHESTRATE_SCRATCH_DIR"


def scratch_base() -> str:
    """Where an edit session's private folder is made: $ORCHESTRATE_SCRATCH_DIR when set, else
    /dev/shm when it is writable (the plaintext then stays in memory), else the temp dir."""
    explicit = os.environ.get(SCRATCH_ENV)
    if explicit:
        return explicit
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


@contextmanager
def _private_folder() -> Iterator[str]:
    """A folder only we can enter (mkdtemp: 0700), removed with everything in it on the way
    out, however that is."""
    base = scratch_base()
    try:
        folder = tempfile.mkdtemp(prefix="orchestrate-edit-", dir=base)
    except OSError as e:
        raise SecretsError(
            f"cannot make a private folder in {base}: {e.strerror} (set {SCRATCH_ENV})"
        ) from None
    try:
        yield folder
    finally:
        _remove(folder)


def _remove(folder: str) -> None:
    # a few tries: a process that was being stopped may have created a file meanwhile
    for _attempt in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            return
    raise SecretsError(f"could not remove {folder}, which may hold plaintext: remove it yourself")


def _edited(path: str, code: int, stderr: bytes) -> bool:
    """What sops's exit status says: True when it wrote a changed file, False when unchanged."""
    rel = os.path.relpath(path)
    if code == 200:  # sops: the file has not been modified
        return False
    if code < 0:
        raise SecretsError(
            f"{rel}: sops was killed ({signal.Signals(-code).name}) before it saved; the file is "
            "unchanged and the decrypted copy is removed"
        )
    if code != 0:
        raise SecretsError(sops.explain_failure(path, stderr))
    return True


def edit(root: str, name: str, say: Say) -> None:
    """Decrypt into $EDITOR through sops, re-encrypt, and replace the file atomically.

    Everything of the session lives in a private folder of orchestrate's own (0700, made in
    $ORCHESTRATE_SCRATCH_DIR when set, else in /dev/shm when writable, else in the temp dir):
    the ciphertext work copy, and the plaintext sops writes for the editor (its TMPDIR). The
    folder is removed on every exit: success, error, sops killed, and SIGINT, SIGTERM or SIGHUP
    to orchestrate, which stop sops and its editor first and then end the call with
    KeyboardInterrupt (the CLI: exit 130, "interrupted"). The file is only replaced once sops
    has written a complete encrypted copy; nothing is written beside it before that.
    """
    path = resolve_file(root, name)
    plan = _fleet_plan(root)
    exists = os.path.exists(path)
    if exists and not read_sops_file(path).encrypted:
        raise UsageError(
            f"{os.path.relpath(path)} is not encrypted: run `orchestrate secrets encrypt` first"
        )
    recipients = _file_recipients(plan, path)
    rel = os.path.relpath(path)
    saved = False
    try:
        with sops.interrupts() as guard, _private_folder() as folder:
            work = os.path.join(folder, os.path.basename(path))  # sops reads the type from it
            args = ["edit", work]
            if exists:
                shutil.copyfile(path, work)  # ciphertext only
            else:
                args[1:1] = ["--age", ",".join(recipients)]
            if not _edited(path, *sops.edit_session(args, folder, guard)):
                say(f"{rel}: unchanged")
                return
            if not read_sops_file(work).encrypted:
                raise SecretsError(f"{rel}: sops did not write an encrypted file")
            guard.check()  # a signal after sops finished: stop here, before replacing
            atomic_move(work, path, mode=0o644)
            saved = True
    except KeyboardInterrupt:
        done = "saved before that" if saved else "nothing saved"
        say(f"{rel}: interrupted; {done}, and the decrypted copy is removed")
        raise
    say(f"{rel}: saved")
    current = read_sops_file(path).recipients
    if sorted(current) != sorted(recipients):
        say("its recipients differ from what the fleet needs: run `orchestrate secrets rekey`")


@dataclass
class RekeyResult:
    changed: list[str]
    unchanged: list[str]


def rekey(root: str, say: Say) -> RekeyResult:
    """Re-encrypt every file whose recipients differ from what the fleet needs; the data key
    is rotated with them, so a removed recipient cannot read any current file."""
    plan = _fleet_plan(root)
    blocking = [p for p in plan.problems if "not SOPS-encrypted" in p.message]
    blocking += [p for sf in plan.files.values() if sf for p in sf.problems]  # unreadable
    if blocking:
        raise FleetErrors(blocking)
    result = RekeyResult([], [])
    for rel in secret_files(root):
        path = os.path.join(secrets_dir(root), rel)
        current = read_sops_file(path).recipients
        needed = _file_recipients(plan, path)
        added = [k for k in needed if k not in current]
        removed = [k for k in current if k not in needed]
        if not added and not removed:
            result.unchanged.append(rel)
            continue
        args = ["rotate"]
        if added:
            args += ["--add-age", ",".join(added)]
        if removed:
            args += ["--rm-age", ",".join(removed)]
        atomic_write(path, sops.run([*args, path], path), mode=0o644)
        result.changed.append(rel)
        say(f"{rel}: +{len(added)} -{len(removed)} recipient(s), data key rotated")
    say(f"{len(result.changed)} file(s) re-encrypted, {len(result.unchanged)} already right")
    return result


@dataclass(frozen=True)
class CheckReport:
    """What `secrets check` found: its problems, and what the fleet's secrets are made of."""

    problems: list[Problem]
    files: int  # the files under secrets/ besides recipients.yaml
    admins: int
    host_keys: int

    @property
    def ok(self) -> bool:
        return not self.problems


def check(root: str) -> list[Problem]:
    """Every problem with the fleet's secrets: plaintext files, missing secrets, hosts without
    keys, and files whose recipients differ from what the fleet needs."""
    return check_report(root).problems


def check_report(root: str) -> CheckReport:
    """:func:`check`, with the counts its summary line names."""
    plan = _fleet_plan(root)
    problems = list(plan.problems)
    names = {v: k for k, v in plan.recipients.hosts.items()}
    names.update({a: "admin" for a in plan.recipients.admins})

    def who(keys: set[str]) -> str:
        return ", ".join(sorted(names.get(k, k[:16] + "...") for k in keys)) or "-"

    for rel in secret_files(root):
        path = os.path.join(secrets_dir(root), rel)
        sf = plan.files.get(rel) or read_sops_file(path)
        if not sf.encrypted:
            continue
        needed = plan.needed_recipients(rel)
        if sorted(set(sf.recipients)) != sorted(set(needed)):
            problems.append(
                Problem(
                    None,
                    f"secrets/{rel}: recipients differ from what the fleet needs "
                    f"(missing: {who(set(needed) - set(sf.recipients))}; "
                    f"extra: {who(set(sf.recipients) - set(needed))})",
                    "run `orchestrate secrets rekey`",
                )
            )
    r = plan.recipients
    return CheckReport(problems, len(secret_files(root)), len(r.admins), len(r.hosts))
