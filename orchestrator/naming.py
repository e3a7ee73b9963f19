"""The names orchestrate gives and the rules names in a fleet follow, in one place: the state
folder, option paths, group names, architectures, priorities, the secrets role, and the host
names Ansible keeps for itself. Schemas carry the simple patterns (fleet.schema.json,
module.schema.json); what a pattern cannot say well is checked here. Light to import: the
fast commands read it."""

from __future__ import annotations

import re

from orchestrator.errors import excerpt

# the fleet's own records and builds, inside the fleet folder (not committed)
STATE_DIR = ".orchestrate"

# one segment of a dotted option path: `services.node-exporter.port` has three
OPTION_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# `secret('FILE/KEY/...')`: segments that cannot climb out of /run/orchestrate/secrets
SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
# the shipped role that installs a host's secrets, and the group of the hosts that get it;
# the host variable it reads is named after it, as a role's variables are
SECRETS_ROLE = "orchestrate_secrets"
SECRETS_GROUP = f"role_{SECRETS_ROLE}"
SECRETS_VAR = SECRETS_ROLE
# the shipped role whose first and last tasks of every apply keep the host's generations, and
# the variable (set by orchestrate's applies only) that turns it on
GENERATIONS_ROLE = "orchestrate_generations"
GENERATIONS_VAR = "orchestrate_generation"

# the architectures a builder may name, and what other tools call them
ARCHES = ("x86_64", "aarch64")
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
WHEEL_PLATFORM = {"x86_64": "manylinux_2_17_x86_64", "aarch64": "manylinux_2_17_aarch64"}

# definition priorities, lower wins (NixOS's mkForce, plain, mkDefault, the option default)
FORCE_PRIORITY = 50
PLAIN_PRIORITY = 100
MKDEFAULT_PRIORITY = 1000
DEFAULT_PRIORITY = 1500
PRIORITY_TAGS = {"!default": MKDEFAULT_PRIORITY, "!force": FORCE_PRIORITY}
PRIORITY_NAMES = {
    FORCE_PRIORITY: "!force",
    PLAIN_PRIORITY: "plain",
    MKDEFAULT_PRIORITY: "!default",
    DEFAULT_PRIORITY: "option default",
}

# Ansible's own names: a host called `all` would be the group of every host
RESERVED_HOSTS = frozenset({"all", "ungrouped", "localhost"})


def option_path_problem(path: str) -> str | None:
    """What is wrong with a dotted option path, or None when it is a good one."""
    parts = path.split(".")
    if any(not p for p in parts):
        return f"option path {excerpt(path)} has an empty segment"
    bad = [p for p in parts if not OPTION_SEGMENT.fullmatch(p)]
    if bad:
        return f"option path segment {excerpt(bad[0])} is not a name (letters, digits, _ and -)"
    return None


_NOT_IN_GROUP_NAMES = re.compile(r"[^A-Za-z0-9_]")


def group_text(name: str) -> str:
    """A name as it appears in a group name: characters other than letters, digits and _
    become _ (Ansible warns about others), so `--limit @tag_rack-1` finds `tag_rack_1`."""
    return _NOT_IN_GROUP_NAMES.sub("_", name)


def group_name(kind: str, name: str) -> str:
    """The group orchestrate makes for a builder, tag, role or architecture: `tag_rack_1`."""
    return f"{kind}_{group_text(name)}"
