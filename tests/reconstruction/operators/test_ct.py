"""Parallel-beam CT: agreement with scikit-image's radon/iradon and FBP accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from reconstruction.data import shepp_logan
from reconstruction.metrics import psnr
from reconstruction.operators import OperatorShapeError, ParallelBeamCT, fbp_filter

SIZE = 64


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return shepp_logan(SIZE).astype(np.float64)


def _disc(n: int, margin: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - n // 2
    return np.asarray(np.hypot(yy, xx) < n / 2 - margin)


def test_forward_matches_skimage_radon(phantom: np.ndarray) -> None:
    op = ParallelBeamCT(SIZE, 45)
    ours = op.A(torch.from_numpy(phantom)[None])[0].numpy()
    theirs = radon(phantom, np.degrees(op.angles), circle=True).T
    assert ours.shape == theirs.shape == (45, SIZE)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 0.03


def test_fbp_is_as_accurate_as_iradon(phantom: np.ndarray) -> None:
    op = ParallelBeamCT(SIZE, 60)
    sinogram = radon(phantom, np.degrees(op.angles), circle=True)
    ours = op.A_dagger(torch.from_numpy(sinogram.T.copy())[None])[0].numpy()
    theirs = iradon(sinogram, np.degrees(op.angles), circle=True, filter_name="ramp")
    inside = _disc(SIZE)
    ref = torch.from_numpy(np.where(inside, phantom, 0.0))[None]
    ours_psnr = float(psnr(torch.from_numpy(np.where(inside, ours, 0.0))[None], ref))
    theirs_psnr = float(psnr(torch.from_numpy(np.where(inside, theirs, 0.0))[None], ref))
    assert ours_psnr >= theirs_psnr - 1e-6
    # The backprojector is the same linear-interpolation model, so the images agree.
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-9)


def test_hann_filter_matches_iradon_hann(phantom: np.ndarray) -> None:
    op = ParallelBeamCT(SIZE, 60, filter="hann")
    sinogram = radon(phantom, np.degrees(op.angles), circle=True)
    ours = op.A_dagger(torch.from_numpy(sinogram.T.copy())[None])[0].numpy()
    theirs = iradon(sinogram, np.degrees(op.angles), circle=True, filter_name="hann")
    inner = _disc(SIZE, margin=2)
    assert np.abs(ours[inner] - theirs[inner]).max() < 0.02 * np.abs(theirs).max()


def test_fbp_converges_with_more_angles(phantom: np.ndarray) -> None:
    x = torch.from_numpy(phantom)[None]
    inside = torch.from_numpy(_disc(SIZE))
    errors = []
    for n in (16, 64, 256):
        op = ParallelBeamCT(SIZE, n)
        rec = op.fbp(op.A(x))
        errors.append(float(torch.linalg.vector_norm((rec - x)[0][inside])))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] / float(torch.linalg.vector_norm(x[0][inside])) < 0.2


def test_nonuniform_angles_are_weighted(phantom: np.ndarray) -> None:
    """A random angle subset reconstructs about as well as equispaced angles of the same count
    would with uniform weights, and far better than without angular weights."""
    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0, np.pi, 90))
    op = ParallelBeamCT(SIZE, angles)
    x = torch.from_numpy(phantom)[None]
    rec = op.fbp(op.A(x))
    inside = torch.from_numpy(_disc(SIZE, margin=1))
    rel = torch.linalg.vector_norm((rec - x)[0][inside]) / torch.linalg.vector_norm(x[0][inside])
    assert float(rel) < 0.3


def test_filters() -> None:
    ramp = fbp_filter(128)
    assert ramp.shape == (65,)
    assert ramp[0] > 0  # the band-limited ramp has a small positive DC (no DC bias)
    assert np.all(np.diff(ramp[1:40]) > 0)
    hann = fbp_filter(128, "hann")
    assert hann[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(hann <= ramp + 1e-15)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        fbp_filter(128, "shepp")  # type: ignore[arg-type]


def test_geometry_validation() -> None:
    with pytest.raises(OperatorShapeError, match="square"):
        ParallelBeamCT((32, 40), 10)
    with pytest.raises(OperatorShapeError, match="angles"):
        ParallelBeamCT(32, 0)
    with pytest.raises(OperatorShapeError, match="finite"):
        ParallelBeamCT(32, [0.0, float("nan")])
    with pytest.raises(ValueError, match="unknown FBP filter"):
        ParallelBeamCT(32, 10, filter="cosine")  # type: ignore[arg-type]
    op = ParallelBeamCT((32, 32), 10, detectors=45)
    assert op.out_shape == (10, 45)
