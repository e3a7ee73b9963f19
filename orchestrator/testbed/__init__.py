"""The local testbed: one podman container per fleet host, running sshd and python3."""

from orchestrator.testbed.manager import TestbedHost, down, load_record, status, up

__all__ = ["TestbedHost", "down", "load_record", "status", "up"]
