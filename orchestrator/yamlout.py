"""The one YAML writer of orchestrate: the build's files, `query --output yaml` and the quoted
scalars of secrets/recipients.yaml all come through :func:`_dump`, in the styles named here."""

from __future__ import annotations

from typing import Any, ClassVar

import yaml


class TaggedMap(dict[str, Any]):
    """A mapping written under a YAML tag of its own (the subclass names it)."""

    tag: ClassVar[str]


class _SafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with tagged mappings."""


class _IndentedDumper(_SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # indented lists, as ansible-lint's yamllint wants


def _represent_tagged(dumper: yaml.SafeDumper, data: TaggedMap) -> yaml.Node:
    return dumper.represent_mapping(data.tag, dict(data))


_SafeDumper.add_multi_representer(TaggedMap, _represent_tagged)


def _dump(data: Any, dumper: type[yaml.SafeDumper], **style: Any) -> str:
    text: str = yaml.dump(data, Dumper=dumper, **style)
    return text


def document(data: Any) -> str:
    """A generated file (Ansible reads it, ansible-lint checks it): block style, indented lists,
    keys in the order given, text as written (UTF-8), lines of 100, a `---` start."""
    return _dump(
        data,
        _IndentedDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
        explicit_start=True,
    )


def listing(data: Any) -> str:
    """A value shown to a person (`query --output yaml`): block style, sorted keys."""
    return _dump(data, _SafeDumper, sort_keys=True, default_flow_style=False)


def quoted_scalar(text: str) -> str:
    """``text`` as a YAML double-quoted scalar on one line, which every YAML reader takes as
    that string."""
    return _dump(text, _SafeDumper, default_style='"', width=2**31 - 1).rstrip("\n")
