"""What the build needs of a fleet's secrets, as a value: the secrets feature works it out from
the secrets folder (which the compiler never reads) and the compile stage writes it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SecretsDelivery:
    """Per host that runs the delivery role, its `orchestrate_secrets` variable (names and
    digests, never values); per encrypted file some host receives, its ciphertext."""

    host_vars: Mapping[str, dict[str, Any]]
    ciphertexts: Mapping[str, bytes]

    @property
    def delivered(self) -> list[str]:
        """The hosts that run the delivery role, sorted."""
        return sorted(self.host_vars)
