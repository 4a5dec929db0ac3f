"""The adapter's conventions: what the network receives per domain/layout, and what comes out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from reconstruction.models import Reconstructor, build_operator, load, load_manifest, magnitude
from reconstruction.operators import MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from tests.reconstruction.models.conftest import SIZE, write_manifest


def _rec(tmp_path: Path, network: Any = None, **overrides: Any) -> Reconstructor:
    manifest = load_manifest(write_manifest(tmp_path, **overrides))
    op = build_operator(manifest, tmp_path)
    return Reconstructor(network or torch.nn.Identity(), op, manifest)


def test_image_domain_is_the_zero_filled_image(tmp_path: Path) -> None:
    rec = _rec(tmp_path)
    assert isinstance(rec.op, SingleCoilMRI)
    y = rec.op.A(torch.rand(2, SIZE, SIZE))
    x = rec.network_input(y)
    assert x.shape == (2, 2, SIZE, SIZE)
    assert x.dtype == torch.float32
    zero_filled = rec.op.A_adjoint(y)
    torch.testing.assert_close(x[:, 0], zero_filled.real)
    torch.testing.assert_close(x[:, 1], zero_filled.imag)
    torch.testing.assert_close(rec(y), zero_filled)  # identity network: f = A^H


@pytest.mark.parametrize("part", ["magnitude", "real"])
def test_real1_input_takes_the_stated_part(tmp_path: Path, part: str) -> None:
    rec = _rec(tmp_path, input={"layout": "real1", "part": part}, output={"layout": "real1"})
    y = rec.op.A(torch.rand(1, SIZE, SIZE))
    z = rec.op.A_adjoint(y)
    want = z.abs() if part == "magnitude" else z.real
    torch.testing.assert_close(rec.network_input(y)[:, 0], want)
    assert not rec(y).is_complex()


def test_measurement_domains(tmp_path: Path) -> None:
    rec = _rec(tmp_path, input={"domain": "measurements", "layout": "complex2"})
    y = rec.op.A(torch.rand(2, SIZE, SIZE))
    k = rec.network_input(y)
    assert k.shape == (2, 2, SIZE, SIZE)
    assert isinstance(rec.op, SingleCoilMRI)
    torch.testing.assert_close(torch.complex(k[:, 0], k[:, 1]), rec.op.to_grid(y))
    multi = _rec(
        tmp_path,
        modality="mri-multicoil",
        input={"domain": "measurements"},
        sampling={"pattern": {"kind": "lines", "ratio": 0.4}, "coils": 3},
    )
    assert isinstance(multi.op, MultiCoilMRI)
    assert multi.network_input(multi.op.A(torch.rand(2, SIZE, SIZE))).shape == (2, 2, 3, SIZE, SIZE)
    ct = _rec(
        tmp_path,
        modality="ct",
        input={"domain": "measurements", "layout": "real1"},
        output={"layout": "real1"},
        sampling={"angles": 12},
    )
    assert isinstance(ct.op, ParallelBeamCT)
    assert ct.network_input(ct.op.A(torch.rand(2, SIZE, SIZE))).shape == (2, 1, 12, SIZE)


def test_ct_image_domain_is_fbp(tmp_path: Path) -> None:
    rec = _rec(
        tmp_path,
        modality="ct",
        input={"layout": "real1"},
        output={"layout": "real1"},
        sampling={"angles": 40},
    )
    assert isinstance(rec.op, ParallelBeamCT)
    y = rec.op.A(torch.rand(1, SIZE, SIZE))
    torch.testing.assert_close(rec(y), rec.op.fbp(y).float())


def test_samples_domain_is_fixed_size(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path, input={"domain": "samples"}, output={"layout": "real1", "part": "magnitude"}
    )
    samples = build_operator(load_manifest(manifest), tmp_path).out_shape[0]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2 * samples, SIZE * SIZE)

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.sigmoid(self.fc(y.flatten(1))).reshape(-1, 1, SIZE, SIZE)
            return out

    x = torch.rand(2, 2, samples)
    program = torch.export.export(Net(), (x,), dynamic_shapes={"y": {0: torch.export.Dim("b")}})
    torch.export.save(program, str(tmp_path / "m.pt2"))
    model = load(tmp_path / "m.pt2", manifest)
    assert model.fixed_size
    assert model.fixed_size_reason is not None
    assert "cannot take more samples" in model.fixed_size_reason
    assert model.input_shape == [-1, 2, samples]


def test_batches_are_split_for_fixed_batch_networks(tmp_path: Path) -> None:
    seen: list[int] = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x

    rec = _rec(tmp_path, network)
    rec.max_batch = 2
    y = rec.op.A(torch.rand(5, SIZE, SIZE))
    assert rec(y).shape == (5, SIZE, SIZE)
    assert seen == [2, 2, 1]


def test_magnitude() -> None:
    z = torch.tensor([3 + 4j])
    assert float(magnitude(z)[0]) == 5.0
    assert magnitude(torch.tensor([-1.0])).tolist() == [-1.0]
