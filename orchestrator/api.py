"""The library's entry points, one per command; the CLI only maps flags onto these."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.compiler.freshness import load_build_data
from orchestrator.pipeline import build, default_out, evaluate_fleet, fleet_data, fresh_build
from orchestrator.selection import select

if TYPE_CHECKING:  # the heavy stages load only when a command needs them
    from orchestrator.evaluator.fleet import Evaluation


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


# ----------------------------------------------------------------------------- testbed, images
Progress = Callable[[str], None]


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
    "boot_images",
    "build",
    "build_images",
    "built_image_hosts",
    "default_out",
    "evaluate_fleet",
    "fleet_data",
    "fresh_build",
    "image_manifest",
    "select",
    "testbed_up",
]
