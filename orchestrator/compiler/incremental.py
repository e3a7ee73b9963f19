"""Incremental compiles: after an edit of module files, only the hosts that use them are
evaluated again, then the hosts that read a value of theirs that changed, and so on; only
their files of the build are written again, and fleet.json, inventory.json and the manifest
get their new entries in place. The build is byte-identical to a full compile's.

Whatever the cache cannot account for makes a full compile instead (the caller's): no cache
or one of another version, fleet.yaml, a role, a secret or a lib file changed, a new file
where one would be an input, a changed module that makes or names a role, a host whose roles
changed, options declared or removed, anything to report, more than half of the hosts to
evaluate again (a full compile uses every core).

A host not evaluated again is read as it was, which holds only while nothing it depends on
changed: a host that one evaluated again reads, and that itself reads (at any remove) one
evaluated again, is evaluated again too. Otherwise a reference cycle through an edited host
could go unseen.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from orchestrator.compiler import cache as store
from orchestrator.compiler.build import (
    BuildResult,
    Spliced,
    manifest_bytes,
    tidy,
    write_patched,
    write_stamp,
)
from orchestrator.compiler.cache import CompileCache, Path
from orchestrator.compiler.content import HOST_FILES, host_entry, host_vars
from orchestrator.compiler.freshness import MANIFEST, input_name
from orchestrator.evaluator.engine import ABSENT, WHOLE, Others
from orchestrator.evaluator.fleet import Evaluation, HostResult
from orchestrator.evaluator.partial import (
    SHIFT,
    Frozen,
    FrozenShape,
    Partial,
    Paths,
    TrieKey,
    evaluate_some,
    walk,
)
from orchestrator.loader.fleet import ModuleFile
from orchestrator.loader.yamlfile import Map

HOST_VARS = "inventory/host_vars/"
MAX_SHARE = 0.5  # of the hosts evaluated again: beyond it, a full compile (every core) is faster
MASK = (1 << SHIFT) - 1
ALL: Any = None  # every path of a host changed (its options are not what they were)
# whether hosts with these results need no secrets delivered (the secrets feature says)
NoSecrets = Callable[[list[HostResult]], bool]


# ------------------------------------------------------------------------ after a full compile
def remember(ev: Evaluation, result: BuildResult, no_secrets: bool, started_ns: int) -> None:
    """Keep what the next compile needs to be incremental, or drop the cache when this build
    cannot be the start of one (warnings to repeat, secrets to deliver). ``started_ns``: when
    the compile began (a file changed since then may have been read before the change)."""
    root = ev.spec.root
    if result.spans is None or ev.warnings or not no_secrets:
        store.drop(result.out_dir, root)
        return
    try:
        with open(os.path.join(result.out_dir, MANIFEST), "rb") as fh:
            manifest = json.loads(fh.read())
    except OSError:  # the build is written; without its manifest there is no cache to keep
        store.drop(result.out_dir, root)
        return
    shas = manifest["inputs"]
    inputs = {p: (store.stat_key(p, started_ns), shas[input_name(p, root)]) for p in result.inputs}
    modules = set(ev.modules)
    others = [p for p in result.inputs if p not in modules and p != ev.spec.file]
    host_files, users, tries, host_trie = _shapes(ev)
    names = sorted(ev.hosts)
    paths = Paths()
    cache = CompileCache(
        version=manifest["version"],
        tool_digest=manifest["tool_digest"],
        root=root,
        out=os.path.realpath(result.out_dir),
        manifest_sha=result.manifest_sha,
        fleet_sha=shas[input_name(ev.spec.file, root)],
        spec=replace(ev.spec, hosts={}, doc=Map(ev.spec.doc.loc)),  # nothing reads doc later
        host_specs={n: pickle.dumps(h, pickle.HIGHEST_PROTOCOL) for n, h in ev.spec.hosts.items()},
        infos=orjson.dumps({n: h.info for n, h in ev.hosts.items()}),
        names=names,
        inputs=inputs,
        watched=_watched(root, ev.spec.lib_dirs, others),
        outputs=_output_keys(result.out_dir),
        role_modules={p for p, f in ev.modules.items() if f.role or f.tasks is not None},
        host_files=host_files,
        users=users,
        modules={},
        tries=tries,
        host_trie=host_trie,
        known=set(ev.evaluator.known_paths),
        paths=paths,
        reads=[],
        exports={},
        roles={n: tuple(r.name for r in h.roles) for n, h in ev.hosts.items()},
        spans=result.spans,
        others=tuple(n for n in [*manifest["outputs"], MANIFEST] if not n.startswith(HOST_VARS)),
        files=result.files,
        role_count=result.roles,
        taken_ns=started_ns,
    )
    number = {n: i for i, n in enumerate(names)}
    cache.reads = [_codes(ev.hosts[n], number, paths) for n in names]
    _keep_shared(cache, ev.modules, set(ev.modules))
    _export(cache, set(range(len(names))), lambda i: ev.hosts[names[i]].config)
    store.save(cache, result.out_dir, root)


def _keep_shared(cache: CompileCache, files: dict[str, ModuleFile], fresh: set[str]) -> None:
    """Keep the module files of ``files`` several hosts use as they were loaded (those of
    ``fresh`` were loaded from new content); forget those no longer used so."""
    for path in [p for p in cache.modules if len(cache.users.get(p, ())) < 2 or p in fresh]:
        del cache.modules[path]
    for path, f in files.items():
        if path not in cache.modules and len(cache.users.get(path, ())) > 1:
            cache.modules[path] = (cache.inputs[path][1], pickle.dumps(f, pickle.HIGHEST_PROTOCOL))


def _codes(result: HostResult, number: dict[str, int], paths: Paths) -> tuple[int, ...]:
    return tuple(sorted(number[h] << SHIFT | paths.id(p) for h, p in result.reads))


def _shapes(
    ev: Evaluation,
) -> tuple[dict[str, tuple[str, ...]], dict[str, list[str]], list[TrieKey], dict[str, int]]:
    host_files: dict[str, tuple[str, ...]] = {}
    users: dict[str, list[str]] = {}
    index: dict[int, int] = {}
    tries: list[TrieKey] = []
    host_trie: dict[str, int] = {}
    for name, he in ev.evaluator.hosts.items():
        files = host_files[name] = tuple(dict.fromkeys(i.file.path for i in he.shape.instances))
        for f in files:
            users.setdefault(f, []).append(name)
        trie = he.shape.trie
        if id(trie) not in index:
            index[id(trie)] = len(tries)
            tries.append(TrieKey.of(trie))
        host_trie[name] = index[id(trie)]
    return host_files, users, tries, host_trie


def _watched(root: str, lib_dirs: tuple[str, ...], others: list[str]) -> dict[str, Any]:
    """The folders where a new file would be a new input or change where a role is found:
    secrets/, the lib folders, the fleet's roles/, and the folders of the role files."""
    folders = {os.path.join(root, "secrets"), os.path.join(root, "roles"), *lib_dirs}
    folders.update(os.path.dirname(p) for p in others)
    return {f: store.folder_key(f) for f in sorted(folders)}


def _output_keys(out_dir: str) -> dict[str, Any]:
    names = [*HOST_FILES, MANIFEST]
    return {n: store.folder_key(os.path.join(out_dir, n)) for n in names}


def _export(cache: CompileCache, targets: set[int], config: Callable[[int], Any]) -> None:
    """The values other hosts read of the hosts numbered ``targets``, from their
    configurations (what was kept of them before goes)."""
    wanted: dict[int, set[int]] = {}
    for codes in cache.reads:
        for code in codes:
            if code >> SHIFT in targets:
                wanted.setdefault(code >> SHIFT, set()).add(code)
    for code in [c for c in cache.exports if c >> SHIFT in targets]:
        del cache.exports[code]
    sets: dict[int, frozenset[Path]] = {}
    for host, read in wanted.items():
        i = cache.host_trie[cache.names[host]]
        options = sets.get(i)
        if options is None:
            options = sets[i] = frozenset(cache.tries[i].options)
        found = None
        for code in read:
            path = cache.paths.paths[code & MASK]
            if path in options:
                found = config(host) if found is None else found
                value = walk(found, path)
                cache.exports[code] = None if value is ABSENT else value


# ------------------------------------------------------------------------ the next compile
def recompile(root: str, out_dir: str, no_secrets: NoSecrets) -> BuildResult | None:
    """The build in ``out_dir`` brought up to date incrementally; None when only a full
    compile can (nothing was written then)."""
    cache = store.load(out_dir, root)
    if cache is None:
        return None
    now = time.time_ns()
    try:
        old = _Old(out_dir, cache)
    except OSError:
        return None
    try:
        changed = _changed_modules(cache, old, now)
        if changed is None:
            return None
        dirty = {h for f in changed for h in cache.users.get(f, ())}
        partial = _settle(cache, dirty, changed, old) if dirty else Partial({}, {}, {})
        if partial is None or not _same_roles(cache, partial, changed, no_secrets):
            return None
        return _write(cache, partial, changed, old, out_dir, now)
    except OSError:
        return None  # (hard links refused, say): the full compile writes it all
    finally:
        old.close()


class _Old:
    """The build an incremental compile starts from, held open: its files are read from the
    folder opened first, whatever another compile swaps in meanwhile, and so are the ones
    linked into the new build. The files it reads are read once, and the hosts' numbers are
    their places in them."""

    def __init__(self, out_dir: str, cache: CompileCache) -> None:
        self.folder = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.number = {h: i for i, h in enumerate(cache.names)}
        self._spans = cache.spans["fleet.json"]
        self._data: dict[str, bytes] = {}
        self._fds: dict[str, int] = {}

    def fd(self, name: str) -> int:
        """A file of the build (at its top), opened once."""
        if name not in self._fds:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fds[name] = os.open(name, flags, dir_fd=self.folder)
        return self._fds[name]

    def key(self, name: str) -> Any:
        return store.fd_key(self.fd(name))

    def __getitem__(self, name: str) -> bytes:
        if name not in self._data:
            fd = self.fd(name)
            chunks: list[bytes] = []
            at = 0
            while chunk := os.pread(fd, 1 << 24, at):
                chunks.append(chunk)
                at += len(chunk)
            self._data[name] = b"".join(chunks)
        return self._data[name]

    def config(self, host: str) -> dict[str, Any]:
        """A host's configuration as the last compile wrote it in fleet.json."""
        start, end = self._spans[self.number[host]]
        config: dict[str, Any] = orjson.loads(self["fleet.json"][start:end])["config"]
        return config

    def close(self) -> None:
        for fd in [self.folder, *self._fds.values()]:
            os.close(fd)


def _changed_modules(cache: CompileCache, old: _Old, now: int) -> set[str] | None:
    """The module files whose content changed; None when anything else did."""
    if hashlib.sha256(old[MANIFEST]).hexdigest() != cache.manifest_sha:
        return None  # another build is there now
    if any(store.folder_key(f) != k for f, k in cache.watched.items()):
        return None
    if any(old.key(n) != k for n, k in cache.outputs.items()):
        return None
    changed: set[str] = set()
    for path, (key, sha) in cache.inputs.items():
        if key is not None and store.stat_key(path, now) == key:
            continue
        if store.sha256_of(path) == sha:
            continue
        if path not in cache.users or path in cache.role_modules:
            return None  # fleet.yaml, a role's file, a lib file, a secret, a role's module
        changed.add(path)
    return changed


def _settle(cache: CompileCache, dirty: set[str], changed: set[str], old: _Old) -> Partial | None:
    """Evaluate ``dirty`` again, and the readers of what changed, until no other host read a
    value that changed (and no host read as it was depends on one evaluated again)."""
    loaded = {
        p: pickle.loads(data)
        for p, (sha, data) in cache.modules.items()
        if p not in changed and cache.inputs[p][1] == sha
    }
    stand_ins = [FrozenShape(t.stand_in()) for t in cache.tries]
    shapes = {h: stand_ins[i] for h, i in cache.host_trie.items()}
    frozen = Frozen(shapes, old.number, cache.paths, cache.exports, old.config)
    others = Others(orjson.loads(cache.infos), frozen.host, cache.known)
    while True:
        if len(dirty) > MAX_SHARE * len(cache.names):
            return None
        names = [h for h in others.infos if h in dirty]
        spec = replace(cache.spec, hosts={h: pickle.loads(cache.host_specs[h]) for h in names})
        partial = evaluate_some(spec, names, others, loaded)
        if partial is None:
            return None
        loaded.update(partial.files)  # read once a compile, however many rounds
        numbers = {old.number[h] for h in dirty}
        changes = {old.number[h]: _changes(cache, old, h, partial) for h in dirty}
        more = _readers(cache, {h: c for h, c in changes.items() if c != set()}, numbers)
        more |= _suspects(cache, partial, numbers | more, old.number)
        if not more:
            break
        dirty |= {cache.names[i] for i in more}
    if _known(cache, partial) != cache.known:
        return None  # options declared or removed: a path unknown to all may now be known
    return partial


def _changes(cache: CompileCache, old: _Old, host: str, partial: Partial) -> Any:
    """The option paths of ``host`` whose value changed, or ALL when its options did."""
    trie = partial.shapes[host].trie
    if TrieKey.of(trie) != cache.tries[cache.host_trie[host]]:
        return ALL
    before = old.config(host)
    after = partial.results[host].config
    if _bytes(before) == _bytes(after):
        return set()
    return {p for p in trie.options if _bytes(walk(before, p)) != _bytes(walk(after, p))}


def _bytes(value: Any) -> bytes:
    """A value compared by its JSON (so that 1, 1.0 and true are three values)."""
    if value is ABSENT:
        return b""
    out: bytes = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return out


def _readers(cache: CompileCache, changes: dict[int, Any], skip: set[int]) -> set[int]:
    """The hosts (but ``skip``) that read something of ``changes`` that changed."""
    found = set()
    paths = cache.paths.paths
    for reader, codes in enumerate(cache.reads):
        if reader in skip:
            continue
        for code in codes:
            host = code >> SHIFT
            if host in changes and _hit(paths[code & MASK], changes[host]):
                found.add(reader)
                break
    return found


def _hit(path: Path, changed: Any) -> bool:
    if changed is ALL:
        return True
    if path and path[0] == WHOLE:
        prefix = path[1:]
        return any(p[: len(prefix)] == prefix for p in changed)
    return path in changed


def _suspects(
    cache: CompileCache, partial: Partial, dirty: set[int], number: dict[str, int]
) -> set[int]:
    """The hosts read as they were that read, at any remove, a host to evaluate again: what
    they are now may differ (a reference cycle, say), so they are evaluated again too. Past
    the reads of the hosts just evaluated, reads are followed as the last compile recorded
    them (those of the hosts not evaluated yet too, so that one more round finds the rest)."""
    start = {number[h] for r in partial.results.values() for h, _p in r.reads}
    start |= {
        code >> SHIFT
        for i in dirty
        if cache.names[i] not in partial.results
        for code in cache.reads[i]
    }
    start -= dirty
    reach = set(start)  # what those read, at any remove
    frontier = set(start)
    while frontier:
        frontier = {c >> SHIFT for h in frontier for c in cache.reads[h]} - reach - dirty
        reach |= frontier
    readers: dict[int, set[int]] = {}  # among them, who reads whom
    for h in reach:
        for code in cache.reads[h]:
            readers.setdefault(code >> SHIFT, set()).add(h)
    found: set[int] = set()  # those that read a host of `dirty`, at any remove
    frontier = {r for d in dirty for r in readers.get(d, ())}
    while frontier:
        found |= frontier
        frontier = {r for h in frontier for r in readers.get(h, ())} - found
    return found


def _known(cache: CompileCache, partial: Partial) -> set[Path]:
    used = {i for h, i in cache.host_trie.items() if h not in partial.results}
    known: set[Path] = set()
    for i in used:
        known |= cache.tries[i].paths()
    for shape in {id(s.trie): s for s in partial.shapes.values()}.values():
        known |= TrieKey.of(shape.trie).paths()
    return known


def _same_roles(
    cache: CompileCache, partial: Partial, changed: set[str], no_secrets: NoSecrets
) -> bool:
    """Whether the build's roles, groups and play stay as they are, and no secret is to be
    delivered: only then are the hosts' own files all that changes."""
    for name, result in partial.results.items():
        if tuple(r.name for r in result.roles) != cache.roles[name]:
            return False
    before = {f for h in partial.results for f in cache.host_files[h]}
    now = {f for s in partial.shapes.values() for f in (i.file.path for i in s.instances)}
    for f in (before ^ now) | changed:
        if f in cache.role_modules or (f in partial.files and _makes_role(partial, f)):
            return False
    return no_secrets(list(partial.results.values()))


def _makes_role(partial: Partial, path: str) -> bool:
    f = partial.files[path]
    return bool(f.role) or f.tasks is not None


# ------------------------------------------------------------------------ writing
def _write(
    cache: CompileCache, partial: Partial, changed: set[str], old: _Old, out_dir: str, now: int
) -> BuildResult:
    """The new files of the hosts evaluated again, fleet.json and inventory.json with their
    entries replaced, the manifest; swapped in, then the stamp and the cache."""
    root = cache.spec.root
    outputs, shas = _host_outputs(cache, partial, old) if partial.results else ({}, {})
    added, removed = _update_files(cache, partial)
    inputs: dict[str, str] = {}
    for path in changed | added:
        sha = store.sha256_of(path)
        if sha is None:
            raise OSError(f"{path} could not be read again")
        inputs[input_name(path, root)] = sha
        cache.inputs[path] = (store.stat_key(path, now), sha)
    for path in removed:
        del cache.inputs[path]
    gone = {input_name(p, root) for p in removed}
    manifest = outputs[MANIFEST] = _manifest(old[MANIFEST], inputs, gone, shas, bool(added))
    if manifest != old[MANIFEST]:
        names = {*cache.others, *(f"{HOST_VARS}{h}.json" for h in cache.names)}
        target = write_patched(outputs, out_dir, root, old.folder, names)
    else:  # nothing changed: the build is this one, if all of it is there
        target = os.path.realpath(out_dir)
        if _names(target) != {*json.loads(manifest)["outputs"], MANIFEST}:
            raise OSError(f"{out_dir} is not the build its manifest lists")
        tidy(target, root)
    cache.manifest_sha = hashlib.sha256(manifest).hexdigest()
    # the inputs' times and sizes as this compile found them unchanged (or hashed them)
    seen = {p: [k[0], k[2]] for p, (k, _sha) in cache.inputs.items() if k is not None}
    listed = sorted(cache.inputs)
    write_stamp(target, root, listed, cache.spec.lib_dirs, cache.manifest_sha, seen)
    _refresh(cache, partial, changed, old, target, now)
    store.save(cache, out_dir, root)
    evaluated = tuple(partial.results)
    return BuildResult(
        out_dir, cache.files, len(cache.names), cache.role_count, evaluated=evaluated
    )


def _names(folder: str) -> set[str]:
    found: set[str] = set()
    for base, _dirs, names in os.walk(folder):
        rel = os.path.relpath(base, folder)
        found.update(n if rel == "." else f"{rel}/{n}" for n in names)
    return found


def _host_outputs(
    cache: CompileCache, partial: Partial, old: _Old
) -> tuple[dict[str, bytes | Spliced], dict[str, str]]:
    """The files of the hosts evaluated again and fleet.json and inventory.json with their
    entries replaced, and the sha256 of each."""
    outputs: dict[str, bytes | Spliced] = {}
    shas: dict[str, str] = {}
    fleet: dict[int, bytes] = {}
    inventory: dict[int, bytes] = {}
    for name, result in partial.results.items():
        data = orjson.dumps(
            host_vars(result, None), option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
        )
        file = f"{HOST_VARS}{name}.json"
        outputs[file], shas[file] = data, hashlib.sha256(data).hexdigest()
        inventory[old.number[name]] = data[:-1]
        fleet[old.number[name]] = host_entry(result)
    hashers = []
    for file, entries in (("fleet.json", fleet), ("inventory.json", inventory)):
        pieces, cache.spans[file] = splice(cache.spans[file], entries, len(old[file]))
        outputs[file] = Spliced(old.fd(file), pieces)
        # tens of megabytes each: hashed side by side (hashlib lets go of the interpreter)
        hashers.append(_Hasher(memoryview(old[file]), pieces))
        hashers[-1].start()
    for file, hasher in zip(HOST_FILES, hashers, strict=True):
        hasher.join()
        if not hasher.digest:  # it failed: no digest is better than a wrong one
            raise OSError(f"{file} could not be hashed")
        shas[file] = hasher.digest
    return outputs, shas


class _Hasher(threading.Thread):
    """The sha256 of a spliced file, from the earlier file's bytes and the new ones."""

    def __init__(self, view: memoryview, pieces: tuple[tuple[int, int] | bytes, ...]) -> None:
        super().__init__(daemon=True)
        self.view, self.pieces, self.digest = view, pieces, ""

    def run(self) -> None:
        h = hashlib.sha256()
        for piece in self.pieces:
            h.update(piece if isinstance(piece, bytes) else self.view[piece[0] : piece[1]])
        self.digest = h.hexdigest()


def splice(
    spans: list[tuple[int, int]], entries: dict[int, bytes], size: int
) -> tuple[tuple[tuple[int, int] | bytes, ...], list[tuple[int, int]]]:
    """A file of ``size`` bytes with the entries at the spans ``entries`` names (by index)
    replaced: what it is made of (ranges of the file and new bytes), and the spans of every
    entry in the result."""
    pieces: list[tuple[int, int] | bytes] = []
    at = 0
    for i in sorted(entries):
        start, end = spans[i]
        pieces += [(at, start), entries[i]]
        at = end
    pieces.append((at, size))
    moved: list[tuple[int, int]] = []
    shift = 0
    for i, (start, end) in enumerate(spans):
        if i in entries:
            moved.append((start + shift, start + shift + len(entries[i])))
            shift += len(entries[i]) - (end - start)
        else:
            moved.append((start + shift, end + shift))
    return tuple(pieces), moved


def _manifest(
    data: bytes, inputs: dict[str, str], gone: set[str], outputs: dict[str, str], added: bool
) -> bytes:
    """The manifest ``data`` with these inputs' and outputs' sha256 (and without the inputs
    ``gone``): the few digests that changed replaced in place, else written again."""
    if not (gone or added) and len(inputs) + len(outputs) <= 64:
        patched = bytearray(data)
        if _patch(patched, "inputs", inputs) and _patch(patched, "outputs", outputs):
            return bytes(patched)
    manifest = json.loads(data)
    manifest["inputs"].update(inputs)
    for name in gone:
        del manifest["inputs"][name]
    manifest["outputs"].update(outputs)
    return manifest_bytes(manifest)


def _patch(data: bytearray, section: str, shas: dict[str, str]) -> bool:
    """Replace the sha256 of each name of ``shas`` in the manifest's ``section`` (as
    manifest_bytes writes it: two spaces before a key of the manifest, four before an
    entry); False when one is not there as expected."""
    start = data.find(f'\n  "{section}": {{\n'.encode())
    end = data.find(b"\n  }", start)
    if start < 0 or end < 0:
        return False
    for name, sha in shas.items():
        key = b"\n    " + json.dumps(name).encode() + b': "'
        at = data.find(key, start, end)
        at += len(key)
        if at < len(key) or data[at + 64 : at + 65] != b'"':
            return False
        data[at : at + 64] = sha.encode()
    return True


def _update_files(cache: CompileCache, partial: Partial) -> tuple[set[str], set[str]]:
    """Each host's module files as they are now: the files no host used before (added) and
    those no host uses any more (removed)."""
    added: set[str] = set()
    removed: set[str] = set()
    for name, shape in partial.shapes.items():
        now = tuple(dict.fromkeys(i.file.path for i in shape.instances))
        before = cache.host_files[name]
        for f in set(before) - set(now):
            cache.users[f].remove(name)
            if not cache.users[f]:
                del cache.users[f]
                removed.add(f)
        for f in set(now) - set(before):
            if f not in cache.users:
                added.add(f)
            cache.users.setdefault(f, []).append(name)
        cache.host_files[name] = now
    return added - removed, removed - added


def _refresh(
    cache: CompileCache, partial: Partial, changed: set[str], old: _Old, target: str, now: int
) -> None:
    """The cache made to describe the build just written."""
    index = {t: i for i, t in enumerate(cache.tries)}
    for name, shape in partial.shapes.items():
        trie = TrieKey.of(shape.trie)
        if trie not in index:
            index[trie] = len(cache.tries)
            cache.tries.append(trie)
        cache.host_trie[name] = index[trie]
    for name, result in partial.results.items():
        cache.reads[old.number[name]] = _codes(result, old.number, cache.paths)
    configs = {old.number[n]: r.config for n, r in partial.results.items()}
    _export(cache, set(configs), configs.__getitem__)
    _keep_shared(cache, partial.files, changed)
    cache.outputs = _output_keys(target)
    for path, (key, sha) in cache.inputs.items():
        if key is None:  # hashed again this time: keep its stat() if it is now old enough
            cache.inputs[path] = (store.stat_key(path, now), sha)
    cache.taken_ns = now
