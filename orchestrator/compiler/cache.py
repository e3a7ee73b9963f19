"""What a compile keeps for the next one to be incremental (compiler/incremental.py): the typed
fleet.yaml, each input's stat() and sha256, each host's module files, option trie, roles and
what it read of other hosts, and where each host's entry lies in fleet.json and
inventory.json.

The cache lives in the fleet's .orchestrate/, one per build folder, and is replaced atomically
after the build it describes was swapped in; it names that build's manifest, so a cache left by
a compile killed in between describes a build that is no longer there and is not used. It is a
pickle, and a pickle can run code when read: it is signed with a key of the user's own (in
their cache folder, never in the fleet), and one whose signature does not hold is not read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator import __version__
from orchestrator.compiler.content import Spans
from orchestrator.compiler.freshness import tool_digest
from orchestrator.evaluator.partial import Paths, TrieKey
from orchestrator.fsutil import atomic_write
from orchestrator.loader.fleet import FleetSpec
from orchestrator.paths import state_dir

FORMAT = 1
# a file changed this close (ns) before its stat() was taken may change again within the same
# time stamp: it is hashed next time whatever its stat() says (git's "racily clean" files)
RACY_NS = 2_000_000_000
Key = tuple[int, int, int, int]
Path = tuple[str, ...]


@dataclass
class CompileCache:
    version: str
    tool_digest: str
    root: str  # as the compile was given it (the spec's paths are made from it)
    out: str  # the build folder, links resolved
    manifest_sha: str  # of the build this describes
    fleet_sha: str
    spec: FleetSpec  # without its hosts, which are kept one by one:
    host_specs: dict[str, bytes]  # each host's HostSpec, pickled
    infos: bytes  # every host's `host` data in fleet order, as JSON
    names: list[str]  # the hosts in name order: a host's number is its place here
    inputs: dict[str, tuple[Key | None, str]]  # every input file: its stat() and sha256
    watched: dict[str, Key | None]  # folders where a new file would be a new input
    outputs: dict[str, Key | None]  # the build's files an incremental compile reads
    role_modules: set[str]  # module files that make or name a role
    host_files: dict[str, tuple[str, ...]]  # each host's module files
    users: dict[str, list[str]]  # each module file's hosts
    # the module files several hosts use, as loaded (sha256 of the file, pickled ModuleFile)
    modules: dict[str, tuple[str, bytes]]
    tries: list[TrieKey]
    host_trie: dict[str, int]
    known: set[Path]  # every option and group path of the fleet
    paths: Paths  # the paths of reads, by number
    reads: list[tuple[int, ...]]  # by host number: the codes of what it read of others
    exports: dict[int, Any]  # by read code: the values others read
    roles: dict[str, tuple[str, ...]]
    spans: Spans
    others: tuple[str, ...]  # the build's files but the hosts' own (fixed while roles are)
    files: int
    role_count: int
    format: int = FORMAT
    taken_ns: int = field(default_factory=time.time_ns)


def cache_path(out_dir: str, root: str) -> str:
    """Where the cache of the build in ``out_dir`` is kept (named as its stamp is)."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(out_dir))).hexdigest()[:32]
    return os.path.join(state_dir(root), "cache", f"compile-{key}.pickle")


def stat_key(path: str, now_ns: int) -> Key | None:
    """What says a file is unchanged without reading it; None when it is missing, or changed
    so recently that it may change again unseen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_mtime_ns > now_ns - RACY_NS or st.st_ctime_ns > now_ns - RACY_NS:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def folder_key(path: str) -> Key | None:
    """A folder's stat(): a file added or removed changes it. Missing: None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def fd_key(fd: int) -> Key:
    """:func:`folder_key` of an open file."""
    st = os.fstat(fd)
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def sha256_of(path: str) -> str | None:
    """The file's sha256, read now (no hash remembered from earlier); None when unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def load(out_dir: str, root: str) -> CompileCache | None:
    """The cache of the build in ``out_dir``, when there is one this orchestrate wrote for this
    fleet and build; None otherwise (the caller compiles in full)."""
    key = _key(create=False)
    if key is None:
        return None
    try:
        with open(cache_path(out_dir, root), "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    sig, payload = raw[:32], raw[32:]
    if not hmac.compare_digest(sig, hmac.new(key, payload, hashlib.sha256).digest()):
        return None
    try:
        found = pickle.loads(payload)
    except Exception:  # a cache this version cannot read is no cache
        return None
    if not isinstance(found, CompileCache) or found.format != FORMAT:
        return None
    if (found.version, found.tool_digest) != (__version__, tool_digest()):
        return None
    if found.root != root or found.out != os.path.realpath(out_dir):
        return None
    return found


def save(cache: CompileCache, out_dir: str, root: str) -> None:
    """Replace the cache of ``out_dir`` atomically; best effort (no key, a read-only fleet
    folder: the next compile is a full one). Not flushed to disk: a cache a crash cut short
    fails its signature, and the next compile is a full one."""
    key = _key(create=True)
    if key is None:
        return
    payload = pickle.dumps(cache, protocol=pickle.HIGHEST_PROTOCOL)
    where = cache_path(out_dir, root)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(where), exist_ok=True)
        signed = hmac.new(key, payload, hashlib.sha256).digest() + payload
        atomic_write(where, signed, durable=False)


def drop(out_dir: str, root: str) -> None:
    """Remove the cache of ``out_dir``: the build there has none (best effort)."""
    with contextlib.suppress(OSError):
        os.unlink(cache_path(out_dir, root))


def _key(create: bool) -> bytes | None:
    """The user's key that signs caches: in their cache folder, made on first use."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "orchestrate", "compile-cache.key")
    try:
        with open(path, "rb") as fh:
            found = fh.read(64)
        if len(found) == 32:
            return found
    except OSError:
        pass
    if not create:
        return None
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, secrets.token_bytes(32), 0o600)
        with open(path, "rb") as fh:  # another compile may have made its own at once
            found = fh.read(64)
    except OSError:
        return None
    return found if len(found) == 32 else None
