"""PyTorch intake: a torch.export archive is loaded only once every member that loading
unpickles is plain tensor data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reconstruction.models import ModelError
from reconstruction.models.torch_model import load_torch_export
from tests.reconstruction.models.conftest import Tiny, hostile_pt2


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_hostile_pickled_member_is_refused_unrun(tmp_path: Path) -> None:
    hostile, witness = hostile_pt2(tmp_path)
    with pytest.raises(ModelError, match=r"sample_inputs/model\.pt is not plain tensor data"):
        load_torch_export(hostile)
    assert not witness.exists()


def test_an_exported_program_loads(tmp_path: Path) -> None:
    x = torch.rand(1, 2, 8, 8)
    network = Tiny()
    torch.export.save(torch.export.export(network, (x,)), str(tmp_path / "m.pt2"))
    program = load_torch_export(tmp_path / "m.pt2")
    assert torch.allclose(program.module()(x), network(x))
