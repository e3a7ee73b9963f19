"""The fleet's own JMESPath functions (the seed's lib/): registered for every expression."""

from typing import Any

from orchestrator.evaluator.expressions import jmespath_function


@jmespath_function("object", "string")
def banner(host: Any, fleet_name: str) -> str:
    """The login banner: which machine this is and that the fleet manages it."""
    tags = ", ".join(host.get("tags") or []) or "untagged"
    return (
        f"{host['name']} ({host['arch']}; {tags}) is managed by orchestrate, fleet {fleet_name}:\n"
        "local changes are overwritten on the next apply.\n"
    )
