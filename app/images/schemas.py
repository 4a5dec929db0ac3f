from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ImageSetOut(BaseModel):
    id: str
    name: str
    images: list[Any]
    owner_id: str | None
    created_at: datetime | None

    model_config = {"from_attributes": True}
