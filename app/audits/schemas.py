from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from app.orm import Status


class AuditCreate(BaseModel):
    model_id: str
    protocol: str = Field(
        "quick", description="A built-in protocol name (quick, standard, pnas) or inline YAML."
    )
    image_set: str = Field("builtin", description="'builtin', or an image set's id or name.")


class Progress(BaseModel):
    stage: str | None
    percent: float


class AuditOut(BaseModel):
    id: str
    model_id: str
    owner_id: str
    protocol: dict[str, str | bool] = Field(
        description="name (a built-in protocol's; every other reads custom:<name>), "
        "version, sha256, builtin (whether it is the built-in protocol itself)"
    )
    image_set: str
    status: Status
    progress: Progress
    verdicts: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
