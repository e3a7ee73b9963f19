#!/usr/bin/python3
"""Generations on the host: what every apply changed, kept so that it can be undone.

Runs on the host, as the module orchestrate_generation (begin and end of every apply) and as
the script /var/lib/orchestrate/generation.py (confirm, revert, rollback, list, and the
watchdog that undoes an apply nobody confirmed). Python's standard library only.

An apply begins with a snapshot of the configuration trees (ROOTS): every file hard-linked
(copied where a link cannot be made) into a staging folder, with its metadata, the package
database and the services' states. When it ends, what differs becomes generation N: for each
file created, changed or removed its previous content (stored under its sha256), owner, group
and mode, or that it did not exist. Nothing else is kept. Generation N+1 of a rollback records,
in the same way, what the rollback replaced, so that it can be undone too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

FORMAT = "orchestrate.generation/1"
STATE = "/var/lib/orchestrate"
# the trees whose files an apply's roles write; /run (decrypted secrets) and data folders are not
ROOTS = ("/etc", "/usr/local", "/root/.ssh", "/home/*/.ssh", "/var/lib/orchestrate/secrets.json")
# derived files, rebuilt by the tools that own them, and files that change by themselves
SKIP = ("/etc/ld.so.cache", "/etc/.pwd.lock", "/etc/mtab", "/etc/adjtime", "/etc/machine-id")
ACCOUNTS = (
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
)
LINK_ABOVE = 1 << 20  # bytes: smaller files are copied into the snapshot, bigger ones linked
RUN_LEASE = 6 * 3600  # an apply whose control node vanished without a trace ends after this


class GenerationError(Exception):
    """What the caller is told, in one line."""


class Store:
    """The generations of one host, under ``prefix`` (``/`` on a host; a folder in tests)."""

    def __init__(self, prefix: str = "/") -> None:
        self.prefix = prefix
        self.state = self.at(STATE)
        self.dir = os.path.join(self.state, "generations")

    def at(self, path: str) -> str:
        return os.path.join(self.prefix, path.lstrip("/"))

    def real(self, full: str) -> str:
        """A host path back from its place under the prefix."""
        return "/" + os.path.relpath(full, self.prefix).replace(os.sep, "/")

    @contextlib.contextmanager
    def locked(self):  # type: ignore[no-untyped-def]
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.state, 0o700)
        os.chmod(self.dir, 0o700)
        with open(os.path.join(self.dir, "lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # -- records -----------------------------------------------------------------------------

    def numbers(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def record(self, number: int) -> dict:
        """Generation ``number``'s record, checked: its digest, and every file it keeps."""
        where = os.path.join(self.dir, str(number))
        try:
            with open(os.path.join(where, "record.json"), encoding="utf-8") as fh:
                rec = json.load(fh)
        except FileNotFoundError:
            raise GenerationError(f"there is no generation {number} on this host") from None
        except ValueError:
            raise GenerationError(
                f"generation {number}'s record is not JSON: it was changed"
            ) from None
        if not isinstance(rec, dict) or rec.get("digest") != digest(rec):
            raise GenerationError(
                f"generation {number}'s record does not match its digest: it was changed on the "
                "host after it was written; refusing to use it"
            )
        for f in rec["files"]:
            blob = f["before"].get("sha256")
            if blob and sha256_file(os.path.join(where, "files", blob)) != blob:
                raise GenerationError(
                    f"generation {number} keeps {f['path']} with other content than it recorded: "
                    "it was changed on the host; refusing to use it"
                )
        return rec

    def status(self, number: int) -> dict:
        try:
            with open(os.path.join(self.dir, str(number), "status.json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return {}

    def set_status(self, number: int, **values) -> None:  # type: ignore[no-untyped-def]
        status = {**self.status(number), **values}
        write_json(os.path.join(self.dir, str(number), "status.json"), status)

    def pending(self) -> dict | None:
        try:
            with open(os.path.join(self.dir, "pending.json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return None

    def set_pending(self, pending: dict | None) -> None:
        path = os.path.join(self.dir, "pending.json")
        if pending is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            write_json(path, pending)


def digest(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sha256_file(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def write_json(path: str, data: object) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- scanning ------------------------------------------------------------------------------------


def entry(st: os.stat_result, full: str) -> dict:
    """What is kept of one path: its kind, owner, group, mode, and what tells a change."""
    kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
    out = {
        "kind": kind,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    if kind == "link":
        out["target"] = os.readlink(full)
    elif kind == "file":
        out.update(size=st.st_size, mtime=st.st_mtime_ns, ino=st.st_ino, dev=st.st_dev)
    return out


def scan(store: Store) -> dict[str, dict]:
    """Every path under the roots (regular files, folders and links; sockets and devices are
    not configuration), by host path."""
    found: dict[str, dict] = {}
    skip = {store.at(p) for p in SKIP}
    for pattern in ROOTS:
        for top in sorted(glob.glob(store.at(pattern))):
            _walk(store, top, skip, found)
    return found


def _walk(store: Store, top: str, skip: set[str], found: dict[str, dict]) -> None:
    stack = [top]
    while stack:
        full = stack.pop()
        if full in skip:
            continue
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            continue
        if stat.S_ISDIR(mode) and full.startswith(os.path.join(store.state, "")):
            continue  # orchestrate's own state is not configuration
        found[store.real(full)] = entry(st, full)
        if stat.S_ISDIR(mode):
            with contextlib.suppress(OSError):
                stack.extend(os.path.join(full, n) for n in os.listdir(full))


def packages(store: Store) -> dict[str, str]:
    """Installed packages and their versions, from dpkg's status file."""
    out: dict[str, str] = {}
    try:
        with open(store.at("/var/lib/dpkg/status"), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        return out
    for para in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            out[f"{fields['Package']}:{arch}"] = fields.get("Version", "")
    return out


def package_files(store: Store, names: list[str]) -> set[str]:
    """The paths dpkg lists for packages (their conffiles and maintainer scripts' files)."""
    out: set[str] = set()
    info = store.at("/var/lib/dpkg/info")
    for name in names:
        pkg, _, arch = name.partition(":")
        for candidate in (f"{pkg}:{arch}.list", f"{pkg}.list"):
            with contextlib.suppress(OSError), open(os.path.join(info, candidate)) as fh:
                out.update(line.rstrip("\n") for line in fh)
                break
    return out


# -- services ------------------------------------------------------------------------------------


def systemd(store: Store) -> bool:
    return store.prefix == "/" and os.path.isdir("/run/systemd/system")


def services(store: Store) -> dict[str, dict]:
    """Each installed service's state: running, and enabled at boot."""
    if store.prefix != "/":
        return {}  # a folder in a test has no services to ask
    if systemd(store):
        return _systemd_services()
    return _sysv_services(store)


def _lines(argv: list[str]) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines()


def _systemd_services() -> dict[str, dict]:
    out: dict[str, dict] = {}
    base = ["systemctl", "--no-legend", "--plain", "--no-pager", "--type=service"]
    for line in _lines([*base, "list-unit-files"]):
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(".service") and "@." not in parts[0]:
            out[parts[0][: -len(".service")]] = {"enabled": parts[1] == "enabled", "running": False}
    for line in _lines([*base, "--all", "list-units"]):
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith(".service"):
            name = parts[0][: -len(".service")]
            out.setdefault(name, {"enabled": False})["running"] = parts[2] == "active"
    return out


def _sysv_services(store: Store) -> dict[str, dict]:
    """Without systemd: every init script asked for its status at once (side by side)."""
    folder = store.at("/etc/init.d")
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and n != "README")
    except FileNotFoundError:
        return {}
    asked = {}
    for n in names:
        with contextlib.suppress(OSError):
            asked[n] = subprocess.Popen(
                [os.path.join(folder, n), "status"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
    enabled = {p.split("/")[-1][3:] for p in glob.glob(store.at("/etc/rc[2345].d/S*"))}
    out = {}
    for n, proc in asked.items():
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -1
        out[n] = {"running": rc == 0, "enabled": n in enabled}
    return out


def service_of(path: str, known: set[str]) -> str | None:
    """The service that reads ``path``: a unit or init script is its service's; a file under
    /etc/NAME/, /etc/NAME.conf or /etc/default/NAME is NAME's (/etc/ssh/ is ssh's)."""
    parts = path.strip("/").split("/")
    name = None
    if path.endswith(".service") and "/systemd/" in path:
        name = parts[-1][: -len(".service")]
    elif path.startswith("/etc/init.d/"):
        name = parts[-1]
    elif len(parts) >= 2 and parts[0] == "etc":
        first = parts[1]
        if first == "default" and len(parts) == 3:
            name = parts[2]
        elif len(parts) > 2 or first.endswith(".conf"):
            name = first.removesuffix(".conf")
    return name if name in known else None


def unit_names(store: Store) -> set[str]:
    """Services that have a systemd unit file, whether or not systemd runs the host."""
    found = set()
    for folder in ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"):
        with contextlib.suppress(OSError):
            names = os.listdir(store.at(folder))
            found |= {n[: -len(".service")] for n in names if n.endswith(".service")}
    return found


def unit_lines(store: Store, name: str, key: str) -> list[str]:
    """``key=`` command lines of NAME's systemd unit: how a host without systemd runs a
    one-shot unit's work (nftables loads its ruleset so)."""
    for folder in ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"):
        path = store.at(f"{folder}/{name}.service")
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
            return [
                line.split("=", 1)[1].strip().lstrip("-@+!")
                for line in fh
                if line.startswith(f"{key}=") and line.split("=", 1)[1].strip()
            ]
    return []


def service_action(store: Store, name: str, action: str) -> str:
    """Start, stop, reload (falling back to restart) or restart NAME; what happened, in words."""
    if store.prefix != "/":
        return f"{name}: {action} (not run in a test folder)"
    if systemd(store):
        verb = "reload-or-restart" if action == "reload" else action
        rc = subprocess.run(["systemctl", verb, f"{name}.service"], check=False).returncode
        return f"{name}: {verb}" + ("" if rc == 0 else f" failed ({rc})")
    script = store.at(f"/etc/init.d/{name}")
    if os.path.exists(script):
        tries = (
            [action] if action != "reload" else ["reload"] + ([] if name == "ssh" else ["restart"])
        )
        for verb in tries:
            if subprocess.run([script, verb], check=False, capture_output=True).returncode == 0:
                return f"{name}: {verb}"
        return f"{name}: {action} failed"
    keys = {"stop": ["ExecStop"], "start": ["ExecStart"]}.get(action, ["ExecReload", "ExecStart"])
    for key in keys:
        lines = unit_lines(store, name, key)
        if lines:
            rcs = [subprocess.run(line, shell=True, check=False).returncode for line in lines]
            return f"{name}: {action} ({key})" + ("" if not any(rcs) else " failed")
    return f"{name}: nothing to {action} it with here"


# -- an apply: begin, end ------------------------------------------------------------------------


def session() -> list[int] | None:
    """The SSH connection this process runs under (its nearest sshd ancestor's pid and start
    time): while it lives, the control node is still running the apply."""
    pid = os.getppid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            return None
        if comm == "sshd":
            return [pid, int(fields[19])]
        pid = int(fields[1])
    return None


def alive(sess: list[int] | None) -> bool:
    if not sess:
        return False
    try:
        with open(f"/proc/{sess[0]}/stat", encoding="utf-8") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19]) == sess[1]
    except (OSError, ValueError, IndexError):
        return False


def snapshot(store: Store) -> str:
    """Stage the current state of the roots: every file linked (or copied) into a fresh
    staging folder, and what scan, dpkg and the services say. Returns the folder."""
    staging = os.path.join(store.dir, "staging")
    shutil.rmtree(staging, ignore_errors=True)
    tree = os.path.join(staging, "tree")
    os.makedirs(tree, mode=0o700)
    found = scan(store)
    for path, e in found.items():
        if e["kind"] == "file":
            keep_copy(store.at(path), os.path.join(tree, path.lstrip("/")), e["size"])
    state = {"scan": found, "packages": packages(store), "services": services(store)}
    write_json(os.path.join(staging, "state.json"), state)
    return staging


def keep_copy(src: str, dst: str, size: int) -> None:
    """A copy of a small file (what a write in place cannot reach); a link to a big one (a
    binary, replaced by a rename when it changes), copied where a link cannot be made."""
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    if size > LINK_ABOVE:
        with contextlib.suppress(OSError):
            os.link(src, dst)
            return
    with contextlib.suppress(OSError):
        shutil.copyfile(src, dst)


def begin(store: Store, run: str, build: str, opts: dict) -> dict:
    """The first task of an apply. ``opts``: timeout (s), keep, magic (arm the watchdog),
    script (this file on the host, for the watchdog)."""
    with store.locked():
        old = store.pending()
        if old is not None and old.get("generation") is not None:
            # one awaiting its confirmation, or on trial: the new apply builds on it
            store.set_status(old["generation"], state="kept: a later apply began")
        elif old is not None:  # one that never ended: what it changed becomes a generation
            make_generation(store, old, "apply", status="interrupted: a later apply began")
        snapshot(store)
        pending = {
            "run": run,
            "build": build,
            "started": time.time(),
            "state": "running",
            "session": session(),
            "timeout": int(opts.get("timeout") or 30),
            "keep": int(opts.get("keep") or 10),
            "magic": bool(opts.get("magic")),
        }
        store.set_pending(pending)
    if pending["magic"] and opts.get("script"):
        arm(store, run, opts["script"])
    return {"changed": False, "armed": pending["magic"]}


def arm(store: Store, run: str, script: str) -> None:
    """Start the watchdog that undoes this apply unless it is confirmed: a transient systemd
    unit where systemd runs the host, else a process detached from the SSH session."""
    argv = [sys.executable, script, "--prefix", store.prefix, "watch"]
    if systemd(store):
        unit = "orchestrate-rollback-" + "".join(c if c.isalnum() else "-" for c in run)
        started = subprocess.run(
            ["systemd-run", "--quiet", "--collect", f"--unit={unit}", *argv],
            check=False,
            capture_output=True,
        )
        if started.returncode == 0:
            return
        # systemd would not start it (no D-Bus, say): the watchdog runs detached instead
    if os.fork() == 0:  # the child leaves the session, forks again, and its child watches
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 256)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.execv(sys.executable, argv)
        os._exit(0)
    os.wait()


def end(store: Store, run: str, trial: int = 0) -> dict:
    """The last task of an apply: what it changed becomes a generation, which then waits for
    the control node's confirmation (or the end of a trial) when the watchdog is armed."""
    with store.locked():
        p = store.pending()
        if p is None or p.get("run") != run:
            raise GenerationError("no apply of this run began on this host")
        rec = make_generation(store, p, "apply")
        if rec is None:
            store.set_pending(None)
            return {"changed": False, "generation": None}
        number = rec["number"]
        if p["magic"] or trial:
            wait = trial or p["timeout"]
            p.update(state="trial" if trial else "awaiting", generation=number)
            p["deadline"] = time.time() + wait
            store.set_pending(p)
            store.set_status(number, state="trial" if trial else "awaiting confirmation",
                             deadline=p["deadline"])  # fmt: skip
        else:
            store.set_pending(None)
            store.set_status(number, state="current")
        return {"changed": True, "generation": number, "digest": rec["digest"]}


# -- generations ---------------------------------------------------------------------------------


def make_generation(store: Store, pending: dict, kind: str, **extra) -> dict | None:  # type: ignore[no-untyped-def]
    """What changed since the staged snapshot, as the next generation (None when nothing did).
    ``extra``: fields of the record (``restores``), and ``status`` for its status file."""
    staging = os.path.join(store.dir, "staging")
    try:
        with open(os.path.join(staging, "state.json"), encoding="utf-8") as fh:
            before = json.load(fh)
    except (FileNotFoundError, ValueError):
        raise GenerationError("the apply's snapshot is missing: nothing can be recorded") from None
    status = extra.pop("status", None)
    now = scan(store)
    pkgs = package_changes(before["packages"], packages(store))
    by_package = package_files(store, pkgs["installed"] + pkgs["upgraded"])
    files, not_restored = [], []
    for path in sorted(set(before["scan"]) | set(now)):
        change = file_change(store, staging, path, before["scan"].get(path), now.get(path))
        if change is None:
            continue
        if path in by_package or (path in ACCOUNTS and pkgs["installed"]):
            not_restored.append({"path": path, "why": "written by a package this apply installed"})
        elif change["before"].get("kind") == "file" and not change["before"].get("sha256"):
            not_restored.append({"path": path, "why": "changed in place: no copy was kept"})
        else:
            files.append(change)
    svc = service_changes(before["services"], services(store))
    if not files and not not_restored and not svc and not any(pkgs.values()):
        shutil.rmtree(staging, ignore_errors=True)
        return None
    number = (store.numbers() or [0])[-1] + 1
    rec = {
        "format": FORMAT, "number": number, "kind": kind, "time": int(time.time()),
        "run": pending.get("run", ""), "build": pending.get("build", ""),
        "files": files, "services": svc, "packages": pkgs, "not_restored": not_restored,
        **extra,
    }  # fmt: skip
    rec["digest"] = digest(rec)
    save(store, staging, rec, status or "current")
    prune(store, int(pending.get("keep") or 10))
    return rec


def file_change(
    store: Store, staging: str, path: str, b: dict | None, a: dict | None
) -> dict | None:
    """``path``'s change, before -> after, or None when it has none."""
    kept = os.path.join(staging, "tree", path.lstrip("/"))
    if b == a:
        return None
    old = described(b, kept, a)
    new = described(a, store.at(path), None)
    if {k: v for k, v in old.items() if k != "blob"} == new:
        return None  # touched, or moved to another inode, with the same content
    return {"path": path, "before": old, "after": new}


def described(e: dict | None, full: str, now: dict | None) -> dict:
    """What a generation says of one state of a path (a file's content by its sha256)."""
    if e is None:
        return {"exists": False}
    out = {"exists": True, "kind": e["kind"], "mode": e["mode"], "uid": e["uid"], "gid": e["gid"]}
    if e["kind"] == "link":
        out["target"] = e["target"]
    elif e["kind"] == "file":
        try:
            kept = os.stat(full)
        except FileNotFoundError:
            kept = None
        # a big file's snapshot is a link: written in place since, it holds the new content
        shared = (
            kept is not None
            and now is not None
            and (now["ino"], now["dev"]) == (kept.st_ino, kept.st_dev)
        )
        if shared and now is not None and (now["size"], now["mtime"]) != (e["size"], e["mtime"]):
            out["sha256"] = None  # the staged link is the file itself, written in place since
        else:
            out["sha256"] = sha256_file(full)
    return out


def package_changes(before: dict, after: dict) -> dict[str, list[str]]:
    return {
        "installed": sorted(p for p in after if p not in before),
        "removed": sorted(p for p in before if p not in after),
        "upgraded": sorted(p for p in after if p in before and after[p] != before[p]),
    }


def service_changes(before: dict, after: dict) -> list[dict]:
    return [
        {"name": n, "before": before.get(n), "after": after.get(n)}
        for n in sorted(set(before) | set(after))
        if before.get(n) != after.get(n)
    ]


def save(store: Store, staging: str, rec: dict, status: str) -> None:
    """Write generation ``rec`` whole, then make it appear with one rename."""
    final = os.path.join(store.dir, str(rec["number"]))
    tmp = os.path.join(store.dir, f".{rec['number']}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = os.path.join(tmp, "files")
    os.makedirs(blobs, mode=0o700)
    for f in rec["files"]:
        blob = f["before"].get("sha256")
        if blob and not os.path.exists(os.path.join(blobs, blob)):
            src = os.path.join(staging, "tree", f["path"].lstrip("/"))
            shutil.copyfile(src, os.path.join(blobs, blob))
    write_json(os.path.join(tmp, "record.json"), rec)
    write_json(os.path.join(tmp, "status.json"), {"state": status})
    os.rename(tmp, final)
    shutil.rmtree(staging, ignore_errors=True)


def prune(store: Store, keep: int) -> None:
    for n in store.numbers()[: -max(keep, 1)]:
        shutil.rmtree(os.path.join(store.dir, str(n)), ignore_errors=True)


def state_of(rec: dict) -> int:
    """The configuration a generation holds: its own, or for a rollback the one it restored."""
    return int(rec.get("restores", rec["number"])) if rec["kind"] == "rollback" else rec["number"]


# -- undoing -------------------------------------------------------------------------------------


def rollback(store: Store, to: int | None, reason: str, run: str = "") -> dict:
    """Bring the host back to generation ``to`` (default: the one before the current one's
    configuration); recorded as a new generation. Call with the lock held."""
    numbers = store.numbers()
    if not numbers:
        raise GenerationError("this host has no generations")
    current = store.record(numbers[-1])
    target = state_of(current) - 1 if to is None else to
    if target < numbers[0] - 1 or target > numbers[-1]:
        kept = f"{numbers[0]}..{numbers[-1]}"
        raise GenerationError(
            f"generation {target} is not kept here (kept: {kept}; 0 is before the first)"
        )
    chain = [store.record(n) for n in numbers if n > target]
    plan: dict[str, tuple[int, dict]] = {}
    desired: dict[str, dict | None] = {}
    for rec in chain:
        for f in rec["files"]:
            plan.setdefault(f["path"], (rec["number"], f["before"]))
        for s in rec["services"]:
            desired.setdefault(s["name"], s["before"])
    restores = 0 if target == 0 else state_of(store.record(target))
    snapshot(store)
    actions = restore(store, plan, desired)
    pending = {"run": run, "build": "", "keep": (store.pending() or {}).get("keep", 10)}
    rec = make_generation(store, pending, "rollback", restores=restores, reason=reason)
    return {"generation": rec and rec["number"], "restores": restores, "actions": actions,
            "digest": rec and rec["digest"]}  # fmt: skip


def restore(store: Store, plan: dict[str, tuple[int, dict]], desired: dict) -> list[str]:
    """Put every planned path back as it was, then bring the services in line: those whose
    unit or script goes away are stopped first; those whose files changed reload."""
    known = set(services(store)) | unit_names(store)
    touched = {s for p in plan if (s := service_of(p, known))}
    going = {s for p, (_n, b) in plan.items() if not b["exists"] and service_of(p, known) and
             (p.startswith("/etc/init.d/") or p.endswith(".service"))}  # fmt: skip
    actions = [service_action(store, s, "stop") for s in sorted(going)]
    for path, (number, before) in sorted(plan.items(), key=lambda kv: _order(kv[0], kv[1][1])):
        put_back(store, path, number, before)
    if systemd(store) and any(p.endswith(".service") for p in plan):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    now = services(store)
    for name in sorted((touched | set(desired)) - going):
        want = desired.get(name) or now.get(name) or {}
        running = (now.get(name) or {}).get("running")
        if want.get("running") is False and running:
            actions.append(service_action(store, name, "stop"))
        elif want.get("running") and not running:
            actions.append(service_action(store, name, "start"))
        elif name in touched and (running or (name not in now and oneshot(store, name))):
            # a one-shot unit on a host without systemd has no state to ask: its work (nftables
            # loading its ruleset) is done again from its unit's command lines
            actions.append(service_action(store, name, "reload"))
    return actions


def oneshot(store: Store, name: str) -> bool:
    """Whether NAME's systemd unit is Type=oneshot: its commands run and end."""
    return unit_lines(store, name, "Type") == ["oneshot"]


def _order(path: str, before: dict) -> tuple[int, int, str]:
    """Folders first (shallowest first), then files and links, then removals (deepest first)."""
    depth = path.count("/")
    if not before["exists"]:
        return (2, -depth, path)
    return (0 if before["kind"] == "dir" else 1, depth, path)


def put_back(store: Store, path: str, number: int, before: dict) -> None:
    full = store.at(path)
    if not before["exists"]:
        if os.path.isdir(full) and not os.path.islink(full):
            with contextlib.suppress(OSError):
                os.rmdir(full)  # a folder the apply made, emptied of what it put there
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
        return
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if before["kind"] == "dir":
        os.makedirs(full, exist_ok=True)
    elif before["kind"] == "link":
        tmp = f"{full}.orchestrate-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(before["target"], tmp)
        os.replace(tmp, full)
    else:
        blob = os.path.join(store.dir, str(number), "files", before["sha256"])
        write_file(full, blob, before)
    os.lchown(full, before["uid"], before["gid"])
    if before["kind"] != "link":
        os.chmod(full, int(before["mode"], 8))


def write_file(full: str, blob: str, before: dict) -> None:
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    tmp = f"{full}.orchestrate-tmp"
    shutil.copyfile(blob, tmp)
    os.chown(tmp, before["uid"], before["gid"])
    os.chmod(tmp, int(before["mode"], 8))
    try:
        os.replace(tmp, full)
    except OSError as e:  # a bind-mounted file (a container's /etc/hosts): written in place
        if e.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        shutil.copyfile(tmp, full)
        os.unlink(tmp)


def revert(store: Store, run: str, reason: str) -> dict:
    """Undo the apply of ``run`` that is still waiting (or never ended): its generation, made
    now when its last task never ran, is rolled back; the result names the rollback."""
    with store.locked():
        p = store.pending()
        if p is None or p.get("run") != run:
            return {"reverted": False, "state": run_state(store, run)}
        return revert_pending(store, p, reason)


def revert_pending(store: Store, p: dict, reason: str) -> dict:
    number = p.get("generation")
    if number is None:
        rec = make_generation(store, p, "apply", status="interrupted")
        number = rec and rec["number"]
    store.set_pending(None)
    if number is None:
        return {"reverted": False, "state": "nothing had changed"}
    out = rollback(store, number - 1, reason, p.get("run", ""))
    store.set_status(number, state=f"rolled back: {reason}", by=out["generation"])
    return {"reverted": True, "generation": number, **out}


def confirm(store: Store, run: str, notes: list) -> dict:
    """The control node reached the host again over a new connection: the apply stays."""
    with store.locked():
        p = store.pending()
        if p is None or p.get("run") != run or p.get("generation") is None:
            return {"confirmed": False, "state": run_state(store, run)}
        number = p["generation"]
        store.set_pending(None)
        store.set_status(number, state="current", confirmed=time.time(), notes=notes)
        return {"confirmed": True, "generation": number, "digest": store.record(number)["digest"]}


def run_state(store: Store, run: str) -> str:
    """What became of ``run``'s apply here, in words."""
    for n in reversed(store.numbers()):
        with contextlib.suppress(GenerationError):
            if store.record(n).get("run") == run and store.record(n)["kind"] == "apply":
                return str(store.status(n).get("state", "current"))
    return "no generation of this run"


def watch(store: Store, poll: float = 0.5) -> None:
    """The watchdog: undoes the pending apply when its deadline passes, or when its SSH
    connection ended before its last task and no confirmation came within the timeout."""
    while True:
        time.sleep(poll)
        with store.locked():
            p = store.pending()
            if p is None:
                return
            now = time.time()
            if p["state"] == "running" and not alive(p.get("session")):
                p.update(state="lost", deadline=now + p["timeout"])
                store.set_pending(p)
            elif p["state"] == "running" and now - p["started"] > RUN_LEASE:
                revert_pending(store, p, "the apply did not end within its lease")
                return
            elif p["state"] != "running" and now >= p["deadline"]:
                why = {
                    "trial": "the trial ended without `orchestrate confirm`",
                    "lost": "the connection was lost before the apply ended",
                }.get(p["state"], "not reachable after apply: no confirmation came")
                revert_pending(store, p, why)
                return


def listing(store: Store) -> dict:
    out = []
    numbers = store.numbers()
    for n in numbers:
        try:
            rec = store.record(n)
        except GenerationError as e:
            out.append({"number": n, "error": str(e)})
            continue
        out.append({
            "number": n, "kind": rec["kind"], "time": rec["time"], "run": rec["run"],
            "build": rec["build"], "digest": rec["digest"], "restores": rec.get("restores"),
            "reason": rec.get("reason"),
            "files": [{"path": f["path"], "change": change_word(f)} for f in rec["files"]],
            "services": [s["name"] for s in rec["services"]], "packages": rec["packages"],
            "not_restored": rec["not_restored"], "status": store.status(n),
            "current": n == numbers[-1],
        })  # fmt: skip
    return {"format": "orchestrate.generations/1", "generations": out, "pending": store.pending()}


def change_word(f: dict) -> str:
    if not f["before"]["exists"]:
        return "created"
    return "removed" if not f["after"]["exists"] else "changed"


def probe(kind: str, args: list[str], stdin: str) -> dict:
    """One attempt of a health check, from this host: ``command`` (the command on stdin, run
    by the shell), ``http URL`` or ``tcp ADDRESS PORT``. What it found, never an error."""
    if kind == "command":
        try:
            done = subprocess.run(
                ["sh", "-c", stdin], capture_output=True, text=True, timeout=300, check=False
            )
        except subprocess.TimeoutExpired:
            return {"rc": -1, "output": "timed out after 300s"}
        return {"rc": done.returncode, "output": (done.stdout + done.stderr)[-4000:]}
    if kind == "http":
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(args[0], timeout=10) as resp:
                return {"status": resp.status, "body": resp.read(65536).decode("utf-8", "replace")}
        except urllib.error.HTTPError as e:
            return {"status": e.code, "body": e.read(65536).decode("utf-8", "replace")}
        except (OSError, ValueError) as e:
            return {"status": None, "error": str(e)[:300]}
    import socket

    try:
        with socket.create_connection((args[0], int(args[1])), timeout=5):
            return {"open": True}
    except OSError as e:
        return {"open": False, "error": str(e)[:300]}


def boot_state(store: Store) -> dict:
    """This boot's id, and whether the host asks for a reboot (Debian's /run/reboot-required,
    which packages and roles' handlers create)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = ""
    return {"boot_id": boot, "required": os.path.exists(store.at("/run/reboot-required"))}


def reboot() -> dict:
    """Reboot in a second, once this answer has left (systemd's, else the init's)."""
    cmd = "sleep 1; systemctl reboot || /sbin/reboot"
    subprocess.Popen(
        ["sh", "-c", cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return {"rebooting": True}


def main(argv: list[str]) -> int:
    """``generation.py [--prefix P] watch | list | confirm RUN | revert RUN REASON |
    rollback [N] | probe command|http URL|tcp ADDRESS PORT``: JSON on stdout (confirm's notes
    and probe command's command on stdin)."""
    prefix = "/"
    if argv[:1] == ["--prefix"]:
        prefix, argv = argv[1], argv[2:]
    store = Store(prefix)
    try:
        command, args = argv[0], argv[1:]
        if command == "watch":
            watch(store)
            return 0
        if command == "list":
            result = listing(store)
        elif command == "confirm":
            result = confirm(store, args[0], json.loads(sys.stdin.read() or "[]"))
        elif command == "revert":
            result = revert(store, args[0], args[1])
        elif command == "probe":
            result = probe(args[0], args[1:], sys.stdin.read() if args[0] == "command" else "")
        elif command == "boot":
            result = boot_state(store)
        elif command == "reboot":
            result = reboot()
        elif command == "rollback":
            with store.locked():
                if store.pending() is not None:
                    raise GenerationError("an apply is in progress here; try again when it ended")
                result = rollback(store, int(args[0]) if args else None, "orchestrate rollback")
        else:
            raise GenerationError(f"unknown command {command!r}")
    except (GenerationError, IndexError, ValueError) as e:
        print(json.dumps({"error": str(e) or "bad arguments"}))
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
