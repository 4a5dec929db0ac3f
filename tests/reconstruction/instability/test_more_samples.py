from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from reconstruction.data import LoadedImage
from reconstruction.instability import run_more_samples
from reconstruction.instability.more_samples import sampling_ladder
from reconstruction.operators import ParallelBeamCT, SingleCoilMRI
from reconstruction.protocols import Protocol
from reconstruction.suite import prepare_images
from tests.reconstruction.conftest import (
    SIZE,
    SampleHungry,
    subject,
    symmetric_mask,
)


def test_ladder_is_nested_and_capped() -> None:
    op = SingleCoilMRI(symmetric_mask())
    ladder = sampling_ladder(op, [0.5, 1.0, 2.0, 10.0], seed=0)
    ratios = [r for _, r, _ in ladder]
    assert ratios == sorted(ratios)
    assert ratios[-1] == 1.0
    masks = [o.mask.numpy() for _, _, o in ladder if isinstance(o, SingleCoilMRI)]
    for small, large in itertools.pairwise(masks):
        assert np.all(small <= large)
    ct = sampling_ladder(ParallelBeamCT(32, 20), [0.5, 1.0, 2.0], seed=0)
    assert [r for _, r, _ in ct] == [10.0, 20.0, 40.0]


def test_quality_falling_with_more_samples_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(SampleHungry(count), mask_dir, domain="measurements")
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_more_samples(model, truth, small_protocol)
    assert result.verdict == "unstable", result.reason
    assert result.numbers["pattern"] == "decay"
    ladder = result.numbers["ladder"]
    assert [r["training"] for r in ladder] == [False, True, False]


def test_fixed_size_networks_are_skipped(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    class Flat(torch.nn.Module):
        def __init__(self, samples: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2 * samples, SIZE * SIZE)

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.sigmoid(self.fc(y.flatten(1)))
            return out.reshape(-1, 1, SIZE, SIZE).repeat(1, 2, 1, 1) * 0.5

    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(Flat(count), mask_dir, domain="samples")
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_more_samples(model, truth, small_protocol)
    assert result.verdict == "skipped"
    assert "cannot take more samples" in result.reason
