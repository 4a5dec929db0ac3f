"""Shared FastAPI dependencies (settings, the store), as ``Annotated`` aliases."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Depends

from app.settings import Settings, get_settings
from app.storage import Store

__all__ = ["SettingsDep", "StoreDep", "get_store"]


@lru_cache
def _store(root: Path) -> Store:
    return Store(root)


def get_store() -> Store:
    return _store(get_settings().store_dir)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
