"""The selection grammar of --limit (and image --limit, testbed --hosts), on the data a build
gives it: hosts, globs, groups, tags, arch:X, ! and &, did-you-mean, nothing selected."""

from __future__ import annotations

import pytest

from orchestrator.errors import UsageError
from orchestrator.selection import select

DATA = {
    "hosts": {h: {} for h in ("LINDA", "cortex-alpha", "data-storage", "pi-1", "pi-2")},
    "groups": {
        "arch_x86_64": ["LINDA", "cortex-alpha", "data-storage"],
        "arch_aarch64": ["pi-1", "pi-2"],
        "tag_core": ["cortex-alpha", "data-storage"],
        "tag_rack_1": ["pi-1"],
        "role_nginx": ["cortex-alpha"],
    },
}


@pytest.mark.parametrize(
    ("limit", "hosts"),
    [
        (None, ["LINDA", "cortex-alpha", "data-storage", "pi-1", "pi-2"]),
        ("pi-1", ["pi-1"]),
        ("pi-*", ["pi-1", "pi-2"]),
        ("core", ["cortex-alpha", "data-storage"]),
        ("@core", ["cortex-alpha", "data-storage"]),
        ("@tag_core", ["cortex-alpha", "data-storage"]),
        ("@rack-1", ["pi-1"]),
        ("role_nginx,pi-2", ["cortex-alpha", "pi-2"]),
        ("arch:aarch64", ["pi-1", "pi-2"]),
        ("arch:x86_64:!core", ["LINDA"]),
        ("!pi-*", ["LINDA", "cortex-alpha", "data-storage"]),
        ("arch_x86_64,&core", ["cortex-alpha", "data-storage"]),
        ("pi-*:&@rack-1", ["pi-1"]),
        (" LINDA , pi-2 ", ["LINDA", "pi-2"]),
    ],
)
def test_selection(limit: str | None, hosts: list[str]) -> None:
    assert select(DATA, limit) == hosts


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("linda", "no host or group named 'linda' (did you mean 'LINDA'?)"),
        ("cortex-alfa", "did you mean 'cortex-alpha'?"),
        ("@cor", "no host or group named '@cor' (did you mean '@core'?)"),
        ("web-*", "'web-*' matches no host name"),
        ("arch:sparc", "unknown architecture 'sparc'"),
        ("pi-1,&core", "selects no host"),
        ("!", "names nothing"),
    ],
)
def test_bad_selections_are_usage_errors(limit: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        select(DATA, limit)
    assert message in str(err.value)
