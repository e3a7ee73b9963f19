"""The rules names in a fleet follow, in one place: option paths, and the host names Ansible
keeps for itself. Schemas carry the simple patterns (fleet.schema.json, module.schema.json);
what a pattern cannot say well is checked here."""

from __future__ import annotations

import re

from orchestrator.errors import excerpt

# one segment of a dotted option path: `services.node-exporter.port` has three
OPTION_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# `secret('FILE/KEY/...')`: segments that cannot climb out of /run/orchestrate/secrets
SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
# the shipped role that installs a host's secrets, and the group of the hosts that get it
SECRETS_ROLE = "orchestrate_secrets"
SECRETS_GROUP = f"role_{SECRETS_ROLE}"
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
