"""Image building: which images a fleet's `images:` entries make, and the bad entries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUNDLED, Run

from orchestrator.api import evaluate_fleet
from orchestrator.errors import UsageError
from orchestrator.images.plan import plan_images


def test_image_list_names_one_file_per_host(cli: Callable[..., Run]) -> None:
    r = cli("--fleet", str(BUNDLED), "image", "list", "--json")
    assert r.code == 0, r.err
    rows = {(x["image"], x["host"]): x for x in json.loads(r.out)}
    assert sorted(rows) == [
        ("data-storage-vm", "data-storage"),
        ("pi-cards", "pi-1"),
        ("pi-cards", "pi-2"),
    ]
    assert rows[("pi-cards", "pi-2")]["file"] == "pi-cards/pi-2.img"
    assert rows[("data-storage-vm", "data-storage")]["format"] == "qcow2"
    assert all(x["sha256"] is None for x in rows.values())


def test_a_format_that_does_not_fit_the_architecture_is_located(
    fleet: Callable[[dict[str, str]], Path], cli: Callable[..., Run]
) -> None:
    root = fleet(
        {
            "fleet.yaml": """
                name: img
                builders: {x: {arch: x86_64}, a: {arch: aarch64}}
                hosts: {vm: {builder: x}, board: {builder: a}}
                images:
                  cards: {hosts: [board, vm], format: sd}
            """
        }
    )
    r = cli("--fleet", str(root), "image", "list")
    assert r.code == 1
    assert (
        "fleet.yaml:5:3: image 'cards': sd images are made for aarch64 hosts; vm is x86_64" in r.err
    )
    with pytest.raises(UsageError, match=r"unknown image.*nope.*the fleet has: cards"):
        plan_images(evaluate_fleet(str(root)), ["nope"])
