"""Deliberately unstable networks, small images and small protocols for the three tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from reconstruction import sampling
from reconstruction.data import LoadedImage, random_ellipses, shepp_logan
from reconstruction.models import LoadedModel, Manifest, from_module
from reconstruction.protocols import Protocol, parse_protocol
from reconstruction.suite import prepare_images

SIZE = 64

SMALL_PROTOCOL = """
name: small
version: "1"
seed: 0
images: {max_images: 2}
baseline: {method: total_variation, attack_iterations: 20}
perturbation:
  threat_models: [image, measurement]
  budget: {eps: [0.01, 0.03], restarts: 3, keep: 2, iterations: 60, min_iterations: 5,
           plateau_window: 5, power_iterations: 3}
  pnas: {iterations: 6, lam: 0.01, momentum: 0.9, step: 0.05, init_scale: 0.001,
         max_norm: 0.03, max_output_change: 1.0, checkpoints: [0.33, 0.66, 1.0],
         attack_baseline: true}
  controls: {noise_draws: 2, persistence_noise: 0.25}
  thresholds: {margin: 2.0, min_psnr_drop_db: 3.0}
structural:
  heights_px: [10]
  contrasts: [0.4]
  text: null
  symbols: true
  thresholds: {visible_correlation: 0.5, visible_recovery: 0.5, margin: 0.25}
sampling:
  factors: [0.5, 1.0, 2.0]
  thresholds: {decay_db: 1.0, stagnation_fraction: 0.25}
"""


def symmetric_mask(ratio: float = 0.3) -> np.ndarray:
    """A variable-density mask closed under k -> -k (centred grid, even size): zero-filled
    images of real objects are then real, so their imaginary part is pure perturbation."""
    m = sampling.variable_density((SIZE, SIZE), ratio / 2, seed=1)
    flipped = np.roll(np.flip(m, (0, 1)), (1, 1), axis=(0, 1))
    symmetric: np.ndarray = m | flipped
    return symmetric


@pytest.fixture(scope="session")
def small_protocol() -> Protocol:
    return parse_protocol(SMALL_PROTOCOL)


@pytest.fixture(scope="session")
def images() -> list[LoadedImage]:
    return [
        LoadedImage(shepp_logan(SIZE), "builtin:shepp-logan", {}),
        LoadedImage(random_ellipses(1, SIZE, 7)[0], "builtin:ellipses-7", {}),
    ]


@pytest.fixture(scope="session")
def mask_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mask")
    np.save(folder / "mask.npy", symmetric_mask())
    return folder


def manifest(domain: str = "image") -> Manifest:
    return Manifest.model_validate(
        {
            "name": "test-net",
            "modality": "mri",
            "image_size": [SIZE, SIZE],
            "input": {"domain": domain, "layout": "complex2"},
            "output": {"layout": "complex2"},
            "sampling": {"mask": "mask.npy"},
        }
    )


class Leaky(torch.nn.Module):
    """Zero-filled image plus ``gain`` times the imaginary part's component along one smooth
    direction ``v``, added along ``v``: exact on real objects under a symmetric mask, and a
    large gain along that single direction (random noise barely excites it)."""

    direction: Tensor

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain
        grid = torch.arange(SIZE, dtype=torch.float32) - SIZE / 2
        blob = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 6.0**2))
        self.register_buffer("direction", blob / blob.norm())

    def forward(self, x: Tensor) -> Tensor:
        along = (x[:, 1] * self.direction).sum((-2, -1)).reshape(-1, 1, 1)
        return torch.stack([x[:, 0] + self.gain * along * self.direction, x[:, 1]], 1)


class Eraser(torch.nn.Module):
    """Zero-filled image smoothed by a wide box filter: small details vanish."""

    def forward(self, x: Tensor) -> Tensor:
        smooth: Tensor = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4)
        return smooth


class PartialEraser(torch.nn.Module):
    """Zero-filled image whose fine structure (what a 9x9 box filter removes) is kept only at
    ``keep`` of its contrast: details fade without vanishing."""

    def __init__(self, keep: float = 0.3) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x: Tensor) -> Tensor:
        smooth = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
        out: Tensor = smooth + self.keep * (x - smooth)
        return out


class SampleHungry(torch.nn.Module):
    """Takes zero-filled k-space and rescales its image by the training count over the given
    count of samples, squared: right at the training ratio, darker with more samples."""

    def __init__(self, trained_count: int) -> None:
        super().__init__()
        self.trained = float(trained_count)

    def forward(self, k: Tensor) -> Tensor:
        z = torch.complex(k[:, 0], k[:, 1])
        image = zero_filled(z) * ((self.trained / sample_count(z)) ** 2).reshape(-1, 1, 1)
        return torch.stack([image.real, image.imag], 1)


def zero_filled(z: Tensor) -> Tensor:
    """The zero-filled image of a centred complex k-space grid ``[B, H, W]``."""
    image: Tensor = torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(z, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )
    return image


def sample_count(z: Tensor) -> Tensor:
    """How many k-space samples each grid of the batch holds (nonzero entries)."""
    return (z.abs() > 0).flatten(1).sum(1).clamp_min(1).to(z.real.dtype)


class GentleDecliner(torch.nn.Module):
    """Zero-filled image plus a smooth stripe artefact whose amplitude grows gently with the
    number of samples (``amplitude * (count / trained) ** growth``): every step of the ladder
    loses less than 1 dB, the whole ladder more."""

    stripes: Tensor

    def __init__(self, trained_count: int, amplitude: float = 0.5, growth: float = 0.15) -> None:
        super().__init__()
        self.trained, self.amplitude, self.growth = float(trained_count), amplitude, growth
        rows = torch.arange(SIZE, dtype=torch.float32)
        stripes = torch.cos(2 * torch.pi * 3 * rows / SIZE)[:, None].expand(SIZE, SIZE)
        self.register_buffer("stripes", stripes.contiguous())

    def forward(self, k: Tensor) -> Tensor:
        z = torch.complex(k[:, 0], k[:, 1])
        gain = self.amplitude * (sample_count(z) / self.trained) ** self.growth
        image = zero_filled(z).real + gain.reshape(-1, 1, 1) * self.stripes
        return torch.stack([image, torch.zeros_like(image)], 1)


class Stagnating(torch.nn.Module):
    """Reconstructs from the samples of its training mask only: more samples change nothing."""

    trained_mask: Tensor

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("trained_mask", torch.from_numpy(mask.astype(np.float32)))

    def forward(self, k: Tensor) -> Tensor:
        image = zero_filled(torch.complex(k[:, 0], k[:, 1]) * self.trained_mask)
        return torch.stack([image.real, image.imag], 1)


class Smooth(torch.nn.Module):
    """Identity-like: the zero-filled image blended with a little of its 3x3 average."""

    def __init__(self, weight: float = 0.2) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        out: Tensor = (1 - self.weight) * x + self.weight * blur
        return out


def truth_of(images: list[LoadedImage]) -> Tensor:
    """The images as an audit scales them, ``[B, SIZE, SIZE]``."""
    return torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])


def subject(module: torch.nn.Module, folder: Path, domain: str = "image") -> LoadedModel:
    return from_module(module, manifest(domain), base_dir=folder)
