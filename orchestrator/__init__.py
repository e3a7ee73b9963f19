"""orchestrate: a NixOS-style module system for Debian fleets, compiled to Ansible.

The public API follows the pipeline: load, evaluate, compile, query.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
