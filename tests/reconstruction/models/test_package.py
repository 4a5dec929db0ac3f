"""``reconstruction.models`` loads its public names from their modules when first used."""

from __future__ import annotations

import importlib

import pytest

import reconstruction.models as models


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(models.__all__) == sorted(models._HOMES)
    for name in models.__all__:
        home = importlib.import_module(f"reconstruction.models.{models._HOMES[name]}")
        assert getattr(models, name) is getattr(home, name)
        assert name in dir(models)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = models.nothing
