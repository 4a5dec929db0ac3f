from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel


class ImageSetOut(BaseModel):
    id: str
    name: str
    images: list[Any]
    owner_id: str | None
    created_at: AwareDatetime | None

    model_config = {"from_attributes": True}
