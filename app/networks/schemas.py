from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class NetworkOut(BaseModel):
    id: str
    name: str
    sha256: str
    format: str
    gradient_access: str
    size_bytes: int
    filename: str
    manifest: dict[str, Any]
    manifest_sha256: str
    files: list[Any]
    summary: dict[str, Any]
    owner_id: str
    created_at: datetime

    model_config = {"from_attributes": True}
