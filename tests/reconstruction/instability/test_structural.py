from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reconstruction.data import LoadedImage
from reconstruction.instability import run_structural
from reconstruction.protocols import Protocol
from reconstruction.suite import prepare_images
from tests.reconstruction.conftest import SIZE, Eraser, Leaky, subject


def test_network_erasing_details_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_structural(subject(Eraser(), mask_dir), truth, small_protocol)
    assert result.verdict == "unstable", result.reason
    counts = result.numbers["counts"]
    assert counts["missed_by_network"] >= 1
    assert counts["visible_baseline"] >= counts["missed_by_network"]
    assert result.figures["panels"]


def test_zero_filled_keeps_details(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_structural(subject(Leaky(0.0), mask_dir), truth, small_protocol)
    assert result.verdict in ("stable", "inconclusive"), result.reason


def test_custom_details_are_placed_and_scored(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    ring = np.zeros((20, 20), bool)
    ring[2:18, 2:18] = True
    ring[6:14, 6:14] = False
    result = run_structural(
        subject(Leaky(0.0), mask_dir), truth, small_protocol, custom=[("ring", ring)]
    )
    names = {row["name"] for row in result.numbers["details"]}
    assert "ring-10px" in names
    assert len(names) >= 2  # the standard details are still placed beside the custom one
