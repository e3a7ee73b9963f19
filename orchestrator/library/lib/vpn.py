"""wg_peers, for orchestrate:networking/vpn.yaml: the WireGuard mesh, every enabled host peered
with every other (the seed's lib). Loaded like a fleet's own lib/*.py."""

from __future__ import annotations

from typing import Any

from orchestrator.evaluator.expressions import config_at, deploy_host, host_entry, jmespath_function


@jmespath_function("object", "string")
def wg_peers(hosts: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """WireGuard peers of ``name``: each other host whose ``vpn.enable`` is true."""
    peers = []
    for other in sorted(hosts):
        if other == name:
            continue
        h = host_entry(hosts, other, "wg_peers")
        vpn = config_at(h.get("config"), ("vpn",), "wg_peers")
        if not vpn or not vpn.get("enable"):
            continue
        peers.append(
            {
                "name": other,
                "public_key": vpn.get("public_key"),
                "endpoint": f"{deploy_host(h, other, 'wg_peers')}:{vpn.get('listen_port')}",
                "allowed_ips": [f"{vpn.get('address')}/32"],
            }
        )
    return peers
