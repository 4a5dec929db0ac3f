from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel


class NetworkSummary(BaseModel):
    """A model in a list: everything but its big JSON fields (``GET /models/{id}`` has them)."""

    id: str
    name: str
    sha256: str
    format: str
    gradient_access: str
    size_bytes: int
    filename: str
    manifest_sha256: str
    owner_id: str
    created_at: AwareDatetime

    model_config = {"from_attributes": True}


class NetworkOut(NetworkSummary):
    manifest: dict[str, Any]
    files: list[Any]
    summary: dict[str, Any]
