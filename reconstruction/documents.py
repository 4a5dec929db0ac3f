"""Reading the project's JSON/YAML documents (model manifests, protocols): one parser and one
way of naming the field at fault."""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["read_mapping", "validation_problem"]


def read_mapping(text: str, source: str, *, as_json: bool = False) -> dict[str, Any]:
    """Parse ``text`` (YAML, or strict JSON with ``as_json``) into a mapping; ``ValueError``
    naming ``source`` otherwise. YAML is read with the safe loader only."""
    try:
        data = json.loads(text) if as_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{source} is not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source} must hold a mapping of fields, got {type(data).__name__}")
    return data


def validation_problem(exc: ValidationError) -> tuple[str | None, str]:
    """The first problem of a pydantic validation: ``(dotted field or None, message)``, the
    message counting any further problems."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return where, message
