"""The fleet's secrets folder: recipients.yaml, the SOPS files, and what each host needs.

Nothing here decrypts. Key names and recipients are readable in a SOPS file without a key, so
everything the compiler and `secrets check` need is known from the ciphertext alone. Every file
here is read with the hardened loader, size-capped and only when it is a regular file: a file
under secrets/ is anyone's commit, and reading it must not hang `compile` or `secrets check`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.compiler.delivery import SecretsDelivery
from orchestrator.errors import FleetErrors, Loc, Problem, fail, quoted
from orchestrator.fsutil import read_regular
from orchestrator.loader.yamlfile import Map, Seq, load_file, load_text
from orchestrator.naming import SECRET_NAME
from orchestrator.paths import state_dir
from orchestrator.yamlout import quoted_scalar

SECRETS_DIR = "secrets"
RECIPIENTS = "recipients.yaml"
TARGET_ROOT = "/run/orchestrate/secrets"
PATH_RE = re.compile(re.escape(TARGET_ROOT) + r"/([A-Za-z0-9_][A-Za-z0-9_./-]*[A-Za-z0-9_])")
AGE_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}")  # matched whole (fullmatch)
DEFAULT_ACCESS = {"owner": "root", "group": "root", "mode": "0400"}
MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any secrets file; a bound on what is read


def split_name(name: str) -> tuple[str, list[str]]:
    """``db/password`` -> (``db.yaml``, [``password``])."""
    first, *rest = name.split("/")
    return f"{first}.yaml", rest


@dataclass
class Recipients:
    admins: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)

    def for_hosts(self, hosts: Iterable[str]) -> list[str]:
        """The admins and the given hosts' keys, in a stable order."""
        keys = list(self.admins) + [self.hosts[h] for h in sorted(set(hosts)) if h in self.hosts]
        return list(dict.fromkeys(keys))


def secrets_dir(root: str) -> str:
    return os.path.join(root, SECRETS_DIR)


def recipients_path(root: str) -> str:
    return os.path.join(secrets_dir(root), RECIPIENTS)


def load_recipients(root: str) -> Recipients:
    """secrets/recipients.yaml (none yet: no recipients); every problem in it, located."""
    path = recipients_path(root)
    if not os.path.lexists(path):
        return Recipients()
    doc = load_file(path, MAX_FILE_BYTES)
    if doc is None:
        return Recipients()
    if not isinstance(doc, Map):
        raise fail(_where(doc, path), "expected a mapping with `admins` and `hosts`")
    problems = [
        Problem(doc.key_locs[k], f"unknown key {quoted(k)} (expected `admins` and `hosts`)")
        for k in doc
        if k not in ("admins", "hosts")
    ]
    admins = _admins(doc, problems)
    hosts = _hosts(doc, problems)
    if problems:
        raise FleetErrors(problems)
    return Recipients(admins, hosts)


def _admins(doc: Map, problems: list[Problem]) -> list[str]:
    node = doc.get("admins")
    if node is None:
        return []
    if not isinstance(node, Seq):
        problems.append(Problem(doc.key_locs["admins"], "`admins` is a list of age public keys"))
        return []
    return [k for k, loc in zip(node, node.item_locs, strict=True) if _age_key(k, loc, problems)]


def _hosts(doc: Map, problems: list[Problem]) -> dict[str, str]:
    node = doc.get("hosts")
    if node is None:
        return {}
    if not isinstance(node, Map):
        problems.append(Problem(doc.key_locs["hosts"], "`hosts` maps host names to age keys"))
        return {}
    out = {}
    for host, key in node.items():  # keys as written: an unquoted `on` is the host "on"
        if _age_key(key, node.key_locs[host], problems):
            out[host] = key
    return out


def _age_key(value: Any, loc: Loc, problems: list[Problem]) -> bool:
    if isinstance(value, str) and AGE_RE.fullmatch(value):
        return True
    problems.append(Problem(loc, f"{quoted(value)} is not an age public key (age1...)"))
    return False


def _where(node: Any, path: str) -> Loc:
    loc = getattr(node, "loc", None)
    return loc if isinstance(loc, Loc) else Loc(path, 1, 1)


def render_recipients(r: Recipients) -> str:
    """recipients.yaml: every name and key quoted, so that a host called `on`, `null` or `007`
    reads back as itself, with this loader or any other."""
    lines = [
        "# Who can decrypt the files in this folder; kept by `orchestrate secrets`.",
        "# Each file is encrypted to the admins and to the hosts that use a secret in it.",
        "admins:" + ("" if r.admins else " []"),
    ]
    lines += [f"  - {quoted_scalar(a)}" for a in r.admins]
    lines.append("hosts:" + ("" if r.hosts else " {}"))
    lines += [f"  {quoted_scalar(h)}: {quoted_scalar(k)}" for h, k in sorted(r.hosts.items())]
    return "\n".join(lines) + "\n"


def save_recipients(root: str, r: Recipients) -> None:
    from orchestrator.fsutil import atomic_write

    os.makedirs(secrets_dir(root), exist_ok=True)
    atomic_write(recipients_path(root), render_recipients(r).encode(), mode=0o644)


def secret_files(root: str) -> list[str]:
    """Every file under secrets/ except recipients.yaml, relative to secrets/."""
    base = secrets_dir(root)
    out = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(folder, n), base)
            if rel != RECIPIENTS:
                out.append(rel)
    return out


@dataclass
class SopsFile:
    """What a SOPS file says without decrypting it."""

    path: str
    encrypted: bool
    recipients: list[str]
    data: Any  # the tree with ENC[...] leaves
    problems: list[Problem] = field(default_factory=list)  # why it could not be read at all

    def has(self, keys: list[str]) -> bool:
        node = self.data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return False
            node = node[k]
        return not isinstance(node, (dict, list))


def read_sops_file(path: str) -> SopsFile:
    """Parse a file under secrets/ without decrypting it.

    ``encrypted`` is False for anything that is not SOPS, including a file that is not UTF-8 or
    not YAML at all: that is plaintext to report, not a reason to stop. A file that cannot be
    read safely raises FleetErrors located in it instead: not a regular file (a FIFO or a link
    to a device would block or never end), larger than MAX_FILE_BYTES, or refused by the
    hardened loader for anything but a syntax error (nesting too deep, an alias bomb, duplicate
    keys, unknown tags, more than one document).
    """
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return SopsFile(path, False, [], None)
    try:
        doc = load_text(text, path)
    except FleetErrors as exc:
        # load_text words the parser's own errors "invalid YAML..."; the rest are its limits
        if all(p.message.startswith("invalid YAML") for p in exc.problems):
            return SopsFile(path, False, [], None)
        raise
    meta = doc.get("sops") if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or "mac" not in meta:
        return SopsFile(path, False, [], doc)
    data = {k: v for k, v in doc.items() if k != "sops"}
    encrypted = _all_encrypted(data)
    recipients = [a.get("recipient") for a in meta.get("age") or [] if isinstance(a, dict)]
    return SopsFile(path, encrypted, [str(r) for r in recipients if r], data)


def _read_collecting(path: str, problems: list[Problem]) -> SopsFile:
    """read_sops_file for the plan, which reports every file's problems together."""
    try:
        return read_sops_file(path)
    except FleetErrors as exc:
        problems.extend(exc.problems)
        return SopsFile(path, False, [], None, list(exc.problems))


def _read_bytes(path: str) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES of them (a FIFO, a device or a huge file
    is refused without blocking), or a located error."""
    try:
        return read_regular(path, MAX_FILE_BYTES)[0]
    except OSError as e:
        raise fail(Loc(path, 1, 1), f"cannot read file: {e.strerror or e}") from None


def _all_encrypted(node: Any) -> bool:
    if isinstance(node, dict):
        return all(_all_encrypted(v) for v in node.values())
    if isinstance(node, list):
        return all(_all_encrypted(v) for v in node)
    return isinstance(node, str) and node.startswith("ENC[")


@dataclass(frozen=True)
class SecretUse:
    """One secret delivered to one host."""

    name: str
    file: str
    keys: tuple[str, ...]
    owner: str
    group: str
    mode: str

    def as_var(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "keys": list(self.keys),
            "owner": self.owner,
            "group": self.group,
            "mode": self.mode,
        }


Decl = tuple[str, dict[str, str], Loc | None]


@dataclass
class SecretsPlan:
    """Per host, the secrets it receives; per file, the hosts that need it; and what is wrong."""

    uses: dict[str, list[SecretUse]]
    file_hosts: dict[str, set[str]]
    recipients: Recipients
    delivered: set[str]  # hosts that run the delivery role (secrets or a recorded key)
    problems: list[Problem]
    files: dict[str, SopsFile | None]

    def needed_recipients(self, file: str) -> list[str]:
        return self.recipients.for_hosts(self.file_hosts.get(file, set()))

    def host_var(self, host: str) -> dict[str, Any]:
        """`orchestrate_secrets` of a host: what its delivery role installs (names, never
        values), and a digest of each encrypted file so that plan sees a changed one."""
        from orchestrator.secrets.sops import version

        uses = self.uses.get(host, [])
        files = sorted({u.file for u in uses})
        return {
            "sops_version": version(),
            "files": {f: self._digest(f) for f in files},
            "secrets": [u.as_var() for u in uses],
        }

    def _digest(self, file: str) -> str:
        import hashlib

        sf = self.files[file]
        assert sf is not None
        with open(sf.path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    def ciphertexts(self) -> dict[str, bytes]:
        """The encrypted files some host receives, copied into the build."""
        out = {}
        for file in sorted({u.file for uses in self.uses.values() for u in uses}):
            sf = self.files[file]
            assert sf is not None
            with open(sf.path, "rb") as fh:
                out[file] = fh.read()
        return out

    def delivery(self) -> SecretsDelivery:
        """What the build needs of this plan."""
        return SecretsDelivery(
            {h: self.host_var(h) for h in sorted(self.delivered)}, self.ciphertexts()
        )


def referenced_names(config: Any) -> set[str]:
    """Secret names whose target path appears anywhere in a host's evaluated configuration."""
    found: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if TARGET_ROOT in node:
                found.update(PATH_RE.findall(node))
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def delivery_plan(ev: Any) -> SecretsDelivery | None:
    """What the compile stage delivers: None when the fleet has no secrets at all (raises
    FleetErrors when anything about them is wrong)."""
    if nothing_to_deliver(ev.spec.root, ev.hosts.values()):
        return None
    plan = plan_for(ev)
    if plan.problems:
        raise FleetErrors(plan.problems)
    return plan.delivery()


def nothing_to_deliver(root: str, hosts: Any) -> bool:
    """Whether the fleet has no secrets folder and none of ``hosts`` (evaluator HostResults)
    declares or refers to a secret: a build then delivers none."""
    import orjson

    needle = TARGET_ROOT.encode()
    return not os.path.isdir(secrets_dir(root)) and not any(
        h.secret_decls or needle in orjson.dumps(h.config) for h in hosts
    )


def plan_for(ev: Any) -> SecretsPlan:
    """The secrets plan of an evaluated fleet (orchestrator.evaluator.fleet.Evaluation)."""
    return plan_secrets(
        ev.spec.root,
        {n: h.config for n, h in ev.hosts.items()},
        {n: list(h.secret_decls) for n, h in ev.hosts.items()},
    )


def plan_secrets(
    root: str, host_configs: dict[str, Any], host_decls: dict[str, list[Decl]]
) -> SecretsPlan:
    """Work out delivery from evaluated configs and the `secrets:` declarations of the modules
    each host uses. Problems (missing files or keys, plaintext, hosts without an age key) are
    collected in the plan; the compiler refuses to go on with any."""
    recipients = load_recipients(root)
    seen = _Survey(root)
    uses: dict[str, list[SecretUse]] = {}
    rpath = recipients_path(root)
    for host in sorted(host_configs):
        decls = host_decls.get(host, [])
        names = referenced_names(host_configs[host])
        chosen = [u for name in sorted(names) if (u := seen.use(host, name, decls)) is not None]
        if chosen and host not in recipients.hosts:
            seen.problems.append(
                Problem(
                    Loc(rpath, 1, 1) if os.path.exists(rpath) else None,
                    f"host {host} uses secrets but has no age key",
                    f"run `orchestrate secrets host-key {host}`, then `orchestrate secrets rekey`",
                    (host,),
                )
            )
        if chosen:
            uses[host] = chosen
    seen.plaintext()
    delivered = set(uses) | (set(recipients.hosts) & set(host_configs))
    return SecretsPlan(uses, seen.file_hosts, recipients, delivered, seen.problems, seen.files)


@dataclass
class _Survey:
    """What plan_secrets learns host by host: each secrets file, read once, the hosts that use
    it, and every problem found on the way."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    file_hosts: dict[str, set[str]] = field(default_factory=dict)
    files: dict[str, SopsFile | None] = field(default_factory=dict)

    def use(self, host: str, name: str, decls: list[Decl]) -> SecretUse | None:
        """Secret ``name`` as ``host`` receives it, or None (and a problem) when it cannot."""
        access, where = _access(name, decls, self.problems, host)
        if not SECRET_NAME.fullmatch(name):
            self.problems.append(
                Problem(where, f"{name!r} is not a secret name (FILE/KEY[/KEY...])")
            )
            return None
        file, keys = split_name(name)
        self.file_hosts.setdefault(file, set()).add(host)
        if file not in self.files:
            path = os.path.join(secrets_dir(self.root), file)
            self.files[file] = (
                _read_collecting(path, self.problems) if os.path.lexists(path) else None
            )
        sf = self.files[file]
        if sf is None:
            self.problems.append(
                Problem(
                    where,
                    f"host {host} uses secret {name!r} but secrets/{file} does not exist",
                    f"create it with `orchestrate secrets edit {file}`",
                    (host,),
                )
            )
            return None
        if not sf.encrypted:
            return None  # reported once per file, by plaintext()
        if not sf.has(keys):
            self.problems.append(
                Problem(
                    where or Loc(sf.path, 1, 1),
                    f"host {host} uses secret {name!r} but secrets/{file} has no value at "
                    f"{'.'.join(keys)}",
                    hosts=(host,),
                )
            )
            return None
        return SecretUse(name, file, tuple(keys), **access)

    def plaintext(self) -> None:
        """Every file under secrets/ is encrypted, whether a host uses it or not."""
        for rel in secret_files(self.root):
            sf = self.files.get(rel) or _read_collecting(
                os.path.join(secrets_dir(self.root), rel), self.problems
            )
            self.files.setdefault(rel, sf)
            if not sf.encrypted and not sf.problems:
                self.problems.append(
                    Problem(
                        Loc(sf.path, 1, 1),
                        "not SOPS-encrypted: plaintext must never be committed or delivered",
                        f"encrypt it with `orchestrate secrets encrypt secrets/{rel}`",
                    )
                )


def _access(
    name: str, decls: list[Decl], problems: list[Problem], host: str
) -> tuple[dict[str, str], Loc | None]:
    """Owner, group and mode of a secret: the module declarations that match it must agree."""
    matched = [(p, a, loc) for p, a, loc in decls if fnmatch.fnmatchcase(name, p)]
    merged = dict(DEFAULT_ACCESS)
    set_by: dict[str, tuple[str, Loc | None]] = {}
    for _pattern, access, loc in matched:
        for k, v in access.items():
            if k in set_by and set_by[k][0] != v:
                problems.append(
                    Problem(
                        loc,
                        f"secret {name!r} on host {host}: {k} is {v!r} here and "
                        f"{set_by[k][0]!r} at {set_by[k][1]}",
                        hosts=(host,),
                    )
                )
            set_by.setdefault(k, (v, loc))
            merged[k] = set_by[k][0]
    mode = merged["mode"]
    merged["mode"] = mode if len(mode) == 4 else "0" + mode
    return merged, (matched[0][2] if matched else None)


def pending_keys_dir(root: str) -> str:
    """Host private keys waiting for their host's next successful apply (0700)."""
    return os.path.join(state_dir(root), "host-keys")


def pending_key(root: str, host: str) -> str | None:
    path = os.path.join(pending_keys_dir(root), f"{host}.agekey")
    return path if os.path.exists(path) else None
