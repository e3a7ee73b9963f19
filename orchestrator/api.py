"""The library's entry points, one per command; the CLI only maps flags onto these. A command
whose exit code says more than "it worked" returns a value that carries the code
(``exit_code``, from the table in orchestrator/exitcodes.py)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator import exitcodes
from orchestrator.compiler.freshness import load_build_data
from orchestrator.pipeline import (
    build,
    compile_build,
    default_out,
    evaluate_fleet,
    fleet_data,
    fresh_build,
)
from orchestrator.selection import select

if TYPE_CHECKING:  # the heavy stages load only when a command needs them
    from orchestrator.evaluator.fleet import Evaluation
    from orchestrator.executor.deploy import ApplyResult, Options, Plan
    from orchestrator.executor.runner import Event
    from orchestrator.schedule import RunSpec
    from orchestrator.secrets.commands import CheckReport
    from orchestrator.testbed.molecule import RoleTest


def declarations(root: str) -> tuple[Evaluation, str | None]:
    """An evaluation `options` and `explain` can answer from while the fleet has errors
    elsewhere, and the note they say when it has."""
    ev = evaluate_fleet(root, keep_going=True)
    if not ev.problems:
        return ev, None
    return ev, (
        f"note: the fleet has {len(ev.problems)} problem(s) (orchestrate compile lists them); "
        "this answer comes from the modules that loaded and may change once they are fixed"
    )


def explained(root: str, host: str, path: str) -> tuple[Any, str | None]:
    """`orchestrate explain`: the explanation, and the note about errors elsewhere."""
    from orchestrator.errors import FleetErrors
    from orchestrator.reporter.explain import explain

    ev, note = declarations(root)
    if host in ev.broken:
        raise FleetErrors(
            ev.problems,
            (f"{host} imports a module that did not load: fix that first to explain it",),
        )
    return explain(ev, host, path), note


Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- plan, apply
@dataclass(frozen=True)
class Planned:
    """`orchestrate plan`: the plan, the flag Ctrl-C sets, and whether changes are to show in
    the exit code (--detailed-exitcode)."""

    plan: Plan
    stop: threading.Event
    detailed: bool

    @property
    def exit_code(self) -> int:
        # read when the command ends: a Ctrl-C while the plan is shown still counts
        failed = bool(self.plan.failed_hosts)
        return exitcodes.for_plan(failed, self.plan.has_changes, self.detailed, self.stop.is_set())


def plan(
    root: str,
    opts: Options,
    offline: bool,
    on_event: Callable[[Event], None],
    stop: threading.Event,
    progress: Progress,
    save_to: str | None = None,
    detailed: bool = False,
) -> Planned:
    """`orchestrate plan`: what would change on the selected hosts (check mode unless
    ``offline``), saved for `apply PLAN` at ``save_to`` when given."""
    from orchestrator.executor.deploy import make_plan
    from orchestrator.fsutil import write_user_file

    made = make_plan(root, opts, offline, on_event, stop, progress)
    if save_to:
        saved = json.dumps(made.to_json(), indent=1, sort_keys=True).encode()
        write_user_file(save_to, saved, mode=0o600, folders=True)
    return Planned(made, stop, detailed)


@dataclass(frozen=True)
class Applied:
    """`orchestrate apply`: the run, or None when the user declined (nothing was applied)."""

    result: ApplyResult | None

    @property
    def exit_code(self) -> int:
        return exitcodes.INVALID if self.result is None else self.result.exit_code


def apply(
    root: str,
    opts: Options,
    plan_file: str | None,
    ask: Callable[[int], bool],
    on_event: Callable[[Event], None],
    stop: threading.Event,
    progress: Progress,
    yes: bool = False,
) -> Applied:
    """`orchestrate apply`: converge the selected hosts, or those of the saved plan
    ``plan_file``. Applying to every host of the fleet without ``yes`` (or a saved plan) asks
    first: ``ask`` gets the number of hosts and says whether to go on."""
    from orchestrator.executor.deploy import apply as run_apply

    def confirm(hosts: list[str]) -> bool:
        everyone = len(hosts) == len(fleet_data(root)["hosts"])
        if yes or not everyone:
            return True
        return ask(len(hosts))

    return Applied(run_apply(root, opts, plan_file, confirm, on_event, stop, progress))


# ----------------------------------------------------------------------------- generations
@dataclass(frozen=True)
class HostsAnswered:
    """`rollback` and `confirm`: each host's answer; a host that refused or could not be
    reached (``error``) makes the command fail."""

    answers: dict[str, dict[str, Any]]

    @property
    def exit_code(self) -> int:
        return exitcodes.for_run(any("error" in a for a in self.answers.values()))


def generations(root: str, host: str) -> dict[str, Any]:
    """`orchestrate generations HOST`: its generations, as it keeps them."""
    from orchestrator.executor.history import host_generations

    return host_generations(root, host)


def rollback(root: str, limit: str | None, to: int | None) -> HostsAnswered:
    """`orchestrate rollback`: the selected hosts back to generation ``to``."""
    from orchestrator.executor.history import rollback as run_rollback

    return HostsAnswered(run_rollback(root, limit, to))


def confirm(root: str, limit: str | None) -> HostsAnswered:
    """`orchestrate confirm`: the selected hosts' trial applies stay."""
    from orchestrator.executor.history import confirm as run_confirm

    return HostsAnswered(run_confirm(root, limit))


# ----------------------------------------------------------------------------- schedule, secrets
@dataclass(frozen=True)
class ScheduledRun:
    """`orchestrate schedule run`: the line it appended to the schedule's runs.jsonl, whose
    ``exit`` is the run's code and the command's."""

    record: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return int(self.record["exit"])


def schedule_run(root: str, name: str, parse: Callable[[str, list[str]], RunSpec]) -> ScheduledRun:
    """Run schedule ``name`` now, as cron does. ``parse`` turns a command line (mode and
    words) into its run: a schedule recorded before its run was kept parsed needs it."""
    from orchestrator.schedule import load_schedule, run_scheduled

    sched = load_schedule(root, name)
    spec = None if sched.spec is not None else parse(sched.mode, sched.args)
    return ScheduledRun(run_scheduled(root, name, spec))


@dataclass(frozen=True)
class SecretsChecked:
    """`orchestrate secrets check`: the report; any problem in it fails the check."""

    report: CheckReport

    @property
    def exit_code(self) -> int:
        return exitcodes.OK if self.report.ok else exitcodes.INVALID


def secrets_check(root: str) -> SecretsChecked:
    from orchestrator.secrets.commands import check_report

    return SecretsChecked(check_report(root))


# ----------------------------------------------------------------------------- role tests
@dataclass(frozen=True)
class RoleTests:
    """`orchestrate test`: each role's scenario run, in the order they were run."""

    results: list[RoleTest]

    @property
    def failed(self) -> list[RoleTest]:
        return [r for r in self.results if not r.passed]

    @property
    def exit_code(self) -> int:
        return exitcodes.for_run(bool(self.failed))


def role_tests(root: str | None, roles: list[str], jobs: int, progress: Progress) -> RoleTests:
    """Run the molecule scenarios of ``roles`` (every testable role when empty), ``jobs`` side
    by side; the fleet ``root``'s own roles take part when there is one. Logs go below the
    fleet's state folder, or to ./test-logs without a fleet."""
    from orchestrator.errors import UsageError
    from orchestrator.paths import state_dir
    from orchestrator.testbed.molecule import run_tests

    logs = os.path.join(state_dir(root), "test-logs") if root else "test-logs"
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    return RoleTests(run_tests(root, roles, logs, progress, jobs))


# ----------------------------------------------------------------------------- testbed, images
@dataclass(frozen=True)
class TestbedStatus:
    """`orchestrate testbed status`: (host, TestbedHost, running, answering) per recorded host;
    a host whose sshd does not answer fails it."""

    rows: list[tuple[str, Any, bool, bool]]

    @property
    def exit_code(self) -> int:
        return exitcodes.for_run(any(not answering for *_, answering in self.rows))


def testbed_status(root: str) -> TestbedStatus:
    from orchestrator.paths import state_dir
    from orchestrator.testbed import status

    return TestbedStatus(status(state_dir(root)))


def testbed_up(
    root: str,
    hosts: str | None,
    from_image: str | None,
    progress: Progress,
    preload: bool = False,
) -> list[tuple[str, Any]]:
    """`orchestrate testbed up`: a container per selected host (every host by default), or
    the built image entry ``from_image`` booted; (host, TestbedHost) for each, by name. With
    ``preload`` the containers start with the packages their hosts' roles install."""
    from orchestrator.paths import state_dir
    from orchestrator.testbed import up

    ev = evaluate_fleet(root)
    chosen = sorted(ev.hosts) if not hosts else select(fleet_data(root), hosts)
    if from_image:
        chosen = built_image_hosts(root, ev, from_image, hosts)
    arch = {h: ev.hosts[h].info["arch"] for h in chosen}
    ports = {h: int(ev.hosts[h].info["deploy"]["port"]) for h in chosen}
    addresses = {h: str(ev.hosts[h].info["deploy"]["host"]) for h in chosen}
    if from_image:
        from orchestrator.images.plan import images_dir
        from orchestrator.testbed.fromimage import up_from_image

        folder = os.path.join(images_dir(root), from_image)
        built = image_manifest(root, from_image)
        files = {h: (os.path.join(folder, str(built[h]["file"])), a) for h, a in arch.items()}
        record = up_from_image(state_dir(root), ev.spec.name, files, progress, ports, addresses)
    else:
        suite = ev.spec.channels["stable"]["suite"]
        builders = {h for h in chosen if ev.hosts[h].info["deploy"]["build_on"] == "remote"}
        packages = None
        if preload:
            from orchestrator.testbed.packages import preloads

            out = fresh_build(root)
            packages = preloads(out, load_build_data(out), chosen)
        record = up(
            state_dir(root),
            ev.spec.name,
            arch,
            suite,
            progress,
            ports,
            addresses,
            builders,
            packages,
        )
    return [(name, record[name]) for name in chosen]


def image_manifest(root: str, name: str) -> dict[str, Any]:
    """What `image build NAME` recorded: host -> its image file's entry."""
    from orchestrator.images.plan import images_dir, load_manifest

    return load_manifest(images_dir(root), name)


def built_image_hosts(root: str, ev: Evaluation, name: str, hosts: str | None) -> list[str]:
    """The hosts of image entry ``name`` (or those of the selection ``hosts``) whose image
    file is built; an error naming the missing ones otherwise."""
    from orchestrator.errors import UsageError
    from orchestrator.images.plan import images_dir, plan_images

    planned = {i.host: i for i in plan_images(ev, [name])}
    chosen = sorted(planned)
    if hosts:
        chosen = [h for h in select(fleet_data(root), hosts) if h in planned]
        if not chosen:
            raise UsageError(f"image {name!r} has no file for the hosts {hosts!r} selects")
    built = image_manifest(root, name)
    missing = [
        h
        for h in chosen
        if h not in built or not os.path.exists(os.path.join(images_dir(root), planned[h].file))
    ]
    if missing:
        raise UsageError(
            f"image {name!r} is not built for {', '.join(missing)}: "
            f"run `orchestrate image build {name}` first"
        )
    return chosen


def build_images(
    root: str,
    names: list[str],
    limit: str | None,
    out: str | None,
    progress: Progress,
    stop: threading.Event,
) -> list[Any] | None:
    """`orchestrate image build`: compile, then build the entries ``names`` (every entry when
    empty) for the hosts ``limit`` selects; None when the fleet declares no images."""
    from orchestrator.errors import UsageError
    from orchestrator.images.build import build_images as build_all
    from orchestrator.images.plan import images_dir, plan_images

    ev, result = build(root)
    planned = plan_images(ev, list(names) or None)
    data = load_build_data(result.out_dir)
    if limit:
        wanted = set(select(data, limit))
        inside = sorted({i.host for i in planned})
        planned = [i for i in planned if i.host in wanted]
        if not planned:
            raise UsageError(
                f"--limit selects none of the chosen images' hosts ({', '.join(inside)})"
            )
    if not planned:
        return None
    where = os.path.abspath(out or images_dir(root))
    return build_all(root, result.out_dir, data, planned, where, progress, stop)


def boot_images(
    root: str,
    name: str,
    limit: str | None,
    timeout: float,
    console_log: str | None,
    progress: Progress,
) -> list[tuple[str, Any]]:
    """`orchestrate image boot`: boot each selected host's built disk under QEMU until its
    sshd answers; (host, BootResult) for each."""
    from orchestrator.errors import UsageError
    from orchestrator.images.boot import boot
    from orchestrator.images.plan import images_dir, plan_images

    ev = evaluate_fleet(root)
    planned = plan_images(ev, [name])
    if planned and planned[0].format == "sd":
        raise UsageError(
            f"{name}: SD card images boot on their board; try one with "
            f"`orchestrate testbed up --from-image {name}`"
        )
    chosen = built_image_hosts(root, ev, name, limit)
    out = []
    for img in planned:
        if img.host in chosen:
            port = int(ev.hosts[img.host].info["deploy"]["port"])
            path = os.path.join(images_dir(root), img.file)
            out.append((img.host, boot(path, img.host, port, timeout, progress, console_log or "")))
    return out


__all__ = [
    "Applied",
    "Planned",
    "RoleTests",
    "ScheduledRun",
    "SecretsChecked",
    "TestbedStatus",
    "apply",
    "boot_images",
    "build",
    "build_images",
    "built_image_hosts",
    "compile_build",
    "default_out",
    "evaluate_fleet",
    "fleet_data",
    "fresh_build",
    "image_manifest",
    "plan",
    "role_tests",
    "schedule_run",
    "secrets_check",
    "select",
    "testbed_status",
    "testbed_up",
]
