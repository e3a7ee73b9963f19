"""The package's shape, checked from its source: stages do not import each other in circles, no
file reaches for another file's private names, and below the command line nothing prints,
exits or imports the command line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "orchestrator"
# not Python of the tool itself: role modules and plugins run on hosts or inside Ansible
SKIP = {"roles", "library", "playbooks", "schemas", "testbed_files", "__pycache__"}
# where output is the job: the command line, and the renderers it hands values to
PRINTS = {"orchestrator.cli", "orchestrator.reporter.run"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO)
        if SKIP & set(rel.parts) or "callback_plugins" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(tree: ast.AST, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(module, name, line) for every import of the package, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in modules else node.module
                if target in modules:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name in modules]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t, _n, _l in _imports(ast.parse(path.read_text()), modules)}
        # a package's __init__ re-exports its own files: importing it is importing them
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_files_of_the_package() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_no_file_imports_another_files_private_names() -> None:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for target, imported, line in _imports(ast.parse(path.read_text()), modules):
            if imported.startswith("_") and not imported.startswith("__") and target != name:
                bad.append(f"{path.relative_to(REPO)}:{line}: {target}.{imported}")
    assert bad == []


def test_below_the_command_line_nothing_prints_exits_or_imports_it() -> None:
    bad = []
    for name, path in _modules().items():
        if name == "orchestrator.cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module == "orchestrator.cli":
                bad.append(f"{where}: imports the command line")
            if isinstance(node, ast.Raise) and "SystemExit" in ast.unparse(node):
                bad.append(f"{where}: raises SystemExit")
            if isinstance(node, ast.Call):
                call = ast.unparse(node.func)
                if call in ("sys.exit", "exit", "quit", "os._exit") and not _in_dev_main(
                    tree, node
                ):
                    bad.append(f"{where}: {call}()")
                if call == "print" and name not in PRINTS and not _in_dev_main(tree, node):
                    bad.append(f"{where}: print()")
    assert bad == []


def _in_dev_main(tree: ast.AST, call: ast.Call) -> bool:
    """A maintainer's script run as ``python3 -m``: its own `main()` may print, and its
    ``if __name__ == "__main__"`` block may exit with main's code."""
    for node in ast.walk(tree):
        script = isinstance(node, ast.FunctionDef) and node.name == "main"
        script |= isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        if script and any(child is call for child in ast.walk(node)):
            return True
    return False


def test_the_executor_reaches_hosts_through_one_seam() -> None:
    """plan and apply never import the entry points, the secrets commands or the testbed
    manager: how a run reaches its hosts comes from executor/connection.py alone."""
    graph = _graph()
    forbidden = {"orchestrator.api", "orchestrator.cli", "orchestrator.secrets.commands"}
    bad = []
    for name, targets in graph.items():
        if name.startswith("orchestrator.executor."):
            seam = name == "orchestrator.executor.connection"
            reach = forbidden | (set() if seam else {"orchestrator.testbed.manager"})
            bad += [f"{name} -> {t}" for t in sorted(targets & reach)]
    assert bad == []


MAX_FUNCTION_LINES = 60  # the house style aims under 40: a function read at once


def _long_functions(limit: int) -> list[str]:
    """``path:line: name is N lines`` for every function of the package (Ansible's content in
    orchestrator/roles/ aside) longer than ``limit``, counted from `def` to its last line."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[1] == "roles":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{rel}:{node.lineno}: {node.name} is {length} lines")
    return found


def test_no_function_is_longer_than_sixty_lines() -> None:
    assert _long_functions(MAX_FUNCTION_LINES) == []


def test_the_length_check_finds_and_names_a_long_function() -> None:
    found = _long_functions(5)
    assert found  # the walk reached the package
    assert all(re.fullmatch(r"orchestrator/\S+\.py:\d+: \w+ is \d+ lines", f) for f in found)
    assert not any(f.startswith("orchestrator/roles/") for f in found)


def _calls(names: set[str]) -> list[tuple[str, str]]:
    """(module, `path:line: call`) for every call of one of ``names`` (as written, e.g.
    ``yaml.dump``) in the package's own code."""
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in names:
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                found.append((name, f"{where}: {ast.unparse(node.func)}()"))
    return found


def test_yaml_is_written_by_one_dumper() -> None:
    dumps = {"yaml.dump", "yaml.safe_dump", "yaml.dump_all", "yaml.safe_dump_all", "yaml.emit"}
    assert [c for m, c in _calls(dumps) if m != "orchestrator.yamlout"] == []


def test_files_are_replaced_by_one_atomic_writer() -> None:
    """fsutil's atomic_write and atomic_move; images/ keeps its own for now, and the roles'
    module_utils (not the tool's code: they run on the hosts) are not looked at."""
    bad = [
        c
        for m, c in _calls({"os.replace"})
        if m != "orchestrator.fsutil" and not m.startswith("orchestrator.images.")
    ]
    assert bad == []


# Waiting for a command that may fail goes through orchestrator.proc; these do something else
# with its outcome, or are still to move (images/ and the testbed's podman helpers)
RUNS_OF_THEIR_OWN = {
    "orchestrator.paths": "checkout_commit: no commit is an answer (None), not an error",
    "orchestrator.testbed.molecule": "a role's test: its exit status is the result, its log a file",
    "orchestrator.testbed.images": "a pipeline: tar's output straight into podman import",
}


def test_commands_are_run_and_waited_for_by_one_helper() -> None:
    bad = [
        c
        for m, c in _calls({"subprocess.run", "subprocess.check_output", "subprocess.call"})
        if m != "orchestrator.proc"
        and m not in RUNS_OF_THEIR_OWN
        and not m.startswith("orchestrator.images.")
    ]
    assert bad == []


def test_the_evaluator_knows_nothing_of_the_shipped_modules() -> None:
    """Their functions live beside them (library/lib/) and are loaded like a fleet's own."""
    words = ("wg_peers", "scrape_", "prometheus", "wireguard")
    bad = [
        f"{path.relative_to(REPO)}: {w}"
        for name, path in _modules().items()
        if name.startswith("orchestrator.evaluator.")
        for w in words
        if w in path.read_text()
    ]
    assert bad == []


def test_the_compiler_is_given_what_secrets_need() -> None:
    """It renders a SecretsDelivery value the pipeline gets from the secrets feature; nothing in
    the compiler asks that feature for it."""
    bad = []
    for name, path in _modules().items():
        if not name.startswith("orchestrator.compiler."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "orchestrator.secrets"
            ):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module}")
    assert bad == []


def test_orchestrate_references_are_resolved_in_one_place() -> None:
    """`orchestrate:NAME` (modules, shared types) and `orchestrate-roles:` names: paths.py."""
    bad = []
    for name, path in _modules().items():
        if name == "orchestrator.paths":
            continue
        tree = ast.parse(path.read_text())
        # an f-string's text (cron.py's entry marker `orchestrate:ROOT:NAME`) is not a reference
        texts = {id(c) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for c in f.values}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in ("orchestrate:", "orchestrate-roles:")
                and id(node) not in texts
            ):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_the_state_folder_is_named_in_one_place() -> None:
    """naming.STATE_DIR."""
    bad = []
    for name, path in _modules().items():
        if name == "orchestrator.naming":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == ".orchestrate":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_ansible_runs_go_through_the_executors_runner() -> None:
    """Deploys, image builds and `secrets host-key --from-host` alike: one adapter reads
    ansible-runner's events."""
    bad = []
    for name, path in _modules().items():
        if name == "orchestrator.executor.runner":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] == "ansible_runner" for n in names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert bad == []
