"""Compile stage: an evaluated fleet to Ansible content, written atomically."""

from orchestrator.compiler.build import BuildResult, compile_fleet, is_fresh, load_build_data

__all__ = ["BuildResult", "compile_fleet", "is_fresh", "load_build_data"]
