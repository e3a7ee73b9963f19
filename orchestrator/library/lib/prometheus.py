"""scrape_targets and scrape_jobs, for orchestrate:services/prometheus.yaml: what Prometheus
scrapes, found from the exporters the fleet's hosts enable. Loaded like a fleet's own
lib/*.py."""

from __future__ import annotations

from typing import Any

from orchestrator.evaluator.expressions import (
    ExprFailure,
    config_at,
    deploy_host,
    host_entry,
    jmespath_function,
    kind_name,
)

EXPORTERS = ("services", "prometheus", "exporters")


@jmespath_function("object", "string")
def scrape_targets(hosts: dict[str, Any], kind: str) -> list[str]:
    """``address:port`` of every host that enables exporter ``kind``, by host name; an exporter
    listening on 0.0.0.0 is scraped at its host's deploy address."""
    targets = []
    for name in sorted(hosts):
        h = host_entry(hosts, name, "scrape_targets")
        found = config_at(h.get("config"), (*EXPORTERS, kind), "scrape_targets")
        if found and found.get("enable"):
            address = found.get("listen_address")
            if address in (None, "0.0.0.0"):
                address = deploy_host(h, name, "scrape_targets")
            targets.append(f"{address}:{found.get('port')}")
    return targets


@jmespath_function("object")
def scrape_jobs(hosts: dict[str, Any]) -> list[dict[str, Any]]:
    """One scrape job per exporter kind that some host enables, named after the kind."""
    kinds: set[str] = set()
    for name in hosts:
        group = config_at(
            host_entry(hosts, name, "scrape_jobs").get("config"), EXPORTERS, "scrape_jobs"
        )
        if group and not hasattr(group, "keys"):
            raise ExprFailure(f"scrape_jobs(): {'.'.join(EXPORTERS)} is {kind_name(group)}")
        if group:
            kinds.update(group.keys())
    jobs = [{"job_name": k, "targets": scrape_targets(hosts, k)} for k in sorted(kinds)]
    return [j for j in jobs if j["targets"]]


@jmespath_function("any")
def route_prefix(url: Any) -> str:
    """The path Prometheus serves under when reached at external URL ``url`` (its route
    prefix), without a trailing slash: "" for no URL or a URL with no path."""
    if url is None:
        return ""
    if not isinstance(url, str):
        raise ExprFailure(f"route_prefix(): the URL is {kind_name(url)}")
    from urllib.parse import urlsplit

    return urlsplit(url).path.rstrip("/")
