from __future__ import annotations

from pathlib import Path

import torch

from reconstruction.data import LoadedImage
from reconstruction.instability import STABLE_WORDING, run_perturbation
from reconstruction.protocols import Protocol
from reconstruction.suite import prepare_images
from tests.reconstruction.conftest import SIZE, Leaky, subject


def _truth(images: list[LoadedImage], manifest_size: int = SIZE) -> torch.Tensor:
    arrays, _ = prepare_images(images, (manifest_size, manifest_size), (0.0, 1.0))
    return torch.from_numpy(arrays)


def test_large_gain_along_one_direction_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    model = subject(Leaky(gain=40.0), mask_dir)
    result = run_perturbation(model, _truth(images), small_protocol)
    assert result.verdict == "unstable", result.reason
    evidence = result.numbers["evidence"][0]
    assert evidence["change_ratio"] >= 2.0
    assert evidence["network_psnr_drop_db"] >= 3.0 or evidence["network_ssim_drop"] >= 0.05 or (
        evidence["network_local_error_increase_db"] >= 6.0
    )
    assert evidence["baseline_search_plateaued"]
    # the controls: same-norm Gaussian noise does far less than the worst case
    row = result.numbers["threat_models"]["image"]["results"][-1]["network"]
    assert max(row["noise_control_change"]) < 0.5 * max(row["output_change"])
    # the paper's search gives r1 < r2 < r3
    sizes = result.numbers["pnas"]["network"]["sizes"]
    for image in range(len(sizes[0])):
        assert sizes[0][image] <= sizes[1][image] <= sizes[2][image]
    assert "baseline" in result.numbers["pnas"]


def test_harmless_network_is_stable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    model = subject(Leaky(gain=0.0), mask_dir)  # the zero-filled reconstruction itself
    result = run_perturbation(model, _truth(images), small_protocol)
    assert result.verdict == "stable", result.reason
    assert result.reason == STABLE_WORDING
    for threat in ("image", "measurement"):
        for row in result.numbers["threat_models"][threat]["results"]:
            assert max(row["network"]["size"]) <= row["eps"] * (1 + 1e-5)
