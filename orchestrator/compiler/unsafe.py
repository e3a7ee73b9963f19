"""Fleet values reach Ansible as data, never as templates.

Ansible renders any string it trusts that looks like Jinja, on the control node: a value
``{{ lookup('pipe', 'touch FILE') }}`` in a host variable runs a command during the play, and an
alert text ``{{ $labels.instance }} is down`` breaks it. ansible-core 2.19 leaves a string alone
when it is marked unsafe: ``{"__ansible_unsafe": TEXT}`` in JSON (host variables, inventory
scripts, extra variables) and the ``!unsafe`` tag in YAML (role defaults, argument specs). Every
string the fleet supplies is written so; a module's own tasks and templates, which are code,
still read ``config`` and ``params`` and get the text as written.
"""

from __future__ import annotations

from typing import Any

from orchestrator.yamlout import TaggedMap

UNSAFE_KEY = "__ansible_unsafe"


def unsafe_json(value: Any) -> Any:
    """``value`` with every string (at any depth; keys are never templated) marked unsafe."""
    kind = type(value)  # the exact types first: this runs for every value of every host
    if kind is str:
        return {UNSAFE_KEY: value}
    if kind is dict:
        return {k: unsafe_json(v) for k, v in value.items()}
    if kind is list:
        return [unsafe_json(v) for v in value]
    if kind is int or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return {UNSAFE_KEY: value}
    if isinstance(value, dict):
        return {k: unsafe_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe_json(v) for v in value]
    return value


def plain_json(value: Any) -> Any:
    """The inverse of :func:`unsafe_json`, for orchestrate's own readers of the build."""
    if isinstance(value, dict):
        if len(value) == 1 and UNSAFE_KEY in value:
            return value[UNSAFE_KEY]
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


class UnsafeMap(TaggedMap):
    """A mapping written to YAML under Ansible's ``!unsafe`` tag: Ansible marks every string
    inside it unsafe. (A tag on each string would not do: Ansible re-reads a tagged scalar as
    if it were plain, so ``!unsafe '80'`` would come back as the number 80.)"""

    tag = "!unsafe"


def unsafe_yaml(value: dict[str, Any]) -> UnsafeMap:
    """``value`` (a mapping), to be written as ``!unsafe``, strings inside it kept as strings."""
    return UnsafeMap(value)
