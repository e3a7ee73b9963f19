"""`orchestrate generations`, `rollback` and `confirm`: a host's generations listed, hosts
brought back to an earlier one, trials made to stay; the control node's last-applied state
follows, so that the next plan compares the fleet with what the hosts now run."""

from __future__ import annotations

from typing import Any

from orchestrator.compiler.freshness import load_build_data
from orchestrator.errors import UsageError
from orchestrator.executor import generations as gens
from orchestrator.executor import state
from orchestrator.executor.lock import FleetLock
from orchestrator.pipeline import build
from orchestrator.selection import select


def _links(root: str, limit: str | None) -> dict[str, gens.Link]:
    _ev, result = build(root)
    data = load_build_data(result.out_dir)
    return gens.links(root, data, select(data, limit))


def host_generations(root: str, host: str) -> dict[str, Any]:
    """The host's generations as it keeps them, each checked against this control node's
    memory of it (a record changed on the host is an error)."""
    _ev, result = build(root)
    data = load_build_data(result.out_dir)
    if host not in data["hosts"]:
        raise UsageError(f"no host named {host!r} in the fleet")
    try:
        listing = gens.checked_listing(root, gens.links(root, data, [host])[host])
    except gens.GenerationError as e:
        raise gens.GenerationError(f"{host}: {e}") from None
    trial = gens.load_trial(root, host)
    listing["trial"] = trial and {"run": trial["run"], "generation": trial["generation"]}
    return listing


def rollback(root: str, limit: str | None, to: int | None) -> dict[str, dict[str, Any]]:
    """Each selected host back to generation ``to`` (default: the one before its current
    configuration); per host, what the host answered, or ``error``."""
    with FleetLock(state.state_dir(root), "rollback"):
        links = _links(root, limit)
        answers = gens.in_parallel(lambda link: _rollback_one(root, link, to), list(links.values()))
        return dict(zip(links, answers, strict=True))


def _rollback_one(root: str, link: gens.Link, to: int | None) -> dict[str, Any]:
    try:
        gens.checked_listing(root, link)
        answer: dict[str, Any] = gens.call(link, "rollback", *([str(to)] if to is not None else []))
    except gens.GenerationError as e:
        return {"error": str(e)}
    previous = state.load_host_state(root, link.host)
    known, record = gens.state_at(root, link.host, int(answer["restores"]))
    if known:
        state.put_host_state(root, link.host, record)
    else:  # made by another control node: what it applied is not known here
        record = previous
        answer["note"] = "its configuration is not known here: the last-applied state is kept"
    if answer.get("generation"):
        entry = {"state": record, "previous": previous}
        gens.remember(root, link.host, int(answer["generation"]), answer["digest"], entry)
    gens.drop_trial(root, link.host)
    return answer


def confirm(root: str, limit: str | None) -> dict[str, dict[str, Any]]:
    """Make the selected hosts' trials stay (hosts without one are left out)."""
    with FleetLock(state.state_dir(root), "confirm"):
        links = _links(root, limit)
        on_trial = [link for h, link in links.items() if gens.load_trial(root, h)]
        answers = gens.in_parallel(lambda link: _confirm_one(root, link), on_trial)
        return {link.host: a for link, a in zip(on_trial, answers, strict=True)}


def _confirm_one(root: str, link: gens.Link) -> dict[str, Any]:
    trial = gens.load_trial(root, link.host)
    assert trial is not None
    try:
        answer: dict[str, Any] = gens.call(link, "confirm", trial["run"], stdin="[]")
    except gens.GenerationError as e:
        return {"error": str(e)}
    if answer.get("confirmed"):
        state.put_host_state(root, link.host, trial["state"])
        entry = {"state": trial["state"], "previous": trial["previous"]}
        gens.remember(root, link.host, int(answer["generation"]), answer["digest"], entry)
    gens.drop_trial(root, link.host)
    return answer
