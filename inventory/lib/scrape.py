"""The fleet's own JMESPath functions (the seed's lib/): registered for every expression."""

from typing import Any

from orchestrator.evaluator.expressions import jmespath_function


@jmespath_function("object", "string")
def scrape_targets(hosts: Any, exporter: str) -> list[str]:
    """`address:port` of every host that enables `exporter`, sorted by host name."""
    targets = []
    for name in sorted(hosts):
        config = hosts[name]["config"]
        found = config.get("services").get("prometheus").get("exporters").get(exporter)
        if found and found.get("enable"):
            address = found.get("listen_address")
            if address == "0.0.0.0":
                address = hosts[name]["deploy"]["host"]
            targets.append(f"{address}:{found.get('port')}")
    return targets
