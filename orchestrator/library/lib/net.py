"""local_address, for the shipped library's health checks: where a service that listens at
an address is reached from its own host. Loaded like a fleet's own lib/*.py."""

from __future__ import annotations

from typing import Any

from orchestrator.evaluator.expressions import ExprFailure, jmespath_function, kind_name


@jmespath_function("any")
def local_address(address: Any) -> str:
    """``address`` itself, or 127.0.0.1 for a service that listens on every address (0.0.0.0,
    or no address given)."""
    if address in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    if not isinstance(address, str):
        raise ExprFailure(f"local_address(): the address is {kind_name(address)}")
    return address
