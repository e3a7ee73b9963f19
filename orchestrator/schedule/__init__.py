"""Scheduled runs: cron entries that run plan or apply non-interactively, never overlapping,
with a JSON line per run and a Prometheus textfile for node_exporter."""

from orchestrator.schedule.cron import (
    RunSpec,
    Schedule,
    add,
    list_schedules,
    load_schedule,
    remove,
    run_scheduled,
)

__all__ = [
    "RunSpec",
    "Schedule",
    "add",
    "list_schedules",
    "load_schedule",
    "remove",
    "run_scheduled",
]
