"""Validation stage: JSON Schema checks whose errors point at file:line:col."""

from orchestrator.validator.schemas import (
    Finding,
    check_option_schema,
    document_problems,
    findings,
    option_validator,
)
from orchestrator.validator.types import schema_path

__all__ = [
    "Finding",
    "check_option_schema",
    "document_problems",
    "findings",
    "option_validator",
    "schema_path",
]
