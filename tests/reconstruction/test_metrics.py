"""Metrics: agreement with scikit-image, the reference's peak, ROI versions, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from reconstruction.data import random_ellipses, shepp_logan
from reconstruction.metrics import linf_error, nmse, psnr, relative_l2, ssim


def _pair(seed: int, size: int = 64, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = random_ellipses(1, size, seed)[0].astype(np.float64) * rng.uniform(0.5, 3.0)
    return ref + noise * rng.standard_normal(ref.shape), ref


@pytest.mark.parametrize("seed", range(6))
def test_psnr_and_ssim_match_skimage(seed: int) -> None:
    x, ref = _pair(seed, size=48 + 8 * seed, noise=0.02 * (seed + 1))
    data_range = float(ref.max() - ref.min())
    expected_psnr = peak_signal_noise_ratio(ref, x, data_range=data_range)
    expected_ssim = structural_similarity(
        x,
        ref,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
    )
    tx, tref = torch.from_numpy(x)[None], torch.from_numpy(ref)[None]
    assert float(psnr(tx, tref)) == pytest.approx(expected_psnr, abs=1e-6)
    assert float(ssim(tx, tref)) == pytest.approx(expected_ssim, abs=1e-3)
    assert float(ssim(tx.float(), tref.float())) == pytest.approx(expected_ssim, abs=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_fastmri_ssim_and_nmse_match_skimage_and_fastmri(seed: int) -> None:
    """fastMRI's evaluate.py: skimage's default SSIM (7x7 uniform window, sample covariances)
    with data_range = the volume's maximum; NMSE = ||gt - pred||^2 / ||gt||^2."""
    x, ref = _pair(seed, size=40 + 8 * seed, noise=0.03)
    peak = float(ref.max()) * 1.3  # a volume maximum above this slice's
    expected = structural_similarity(ref, x, data_range=peak)
    tx, tref = torch.from_numpy(x)[None], torch.from_numpy(ref)[None]
    assert float(ssim(tx, tref, data_range=peak, window="uniform")) == pytest.approx(
        expected, abs=1e-6
    )
    expected_nmse = np.linalg.norm(ref - x) ** 2 / np.linalg.norm(ref) ** 2
    assert float(nmse(tx, tref)) == pytest.approx(expected_nmse, rel=1e-9)
    expected_psnr = peak_signal_noise_ratio(ref, x, data_range=peak)
    assert float(psnr(tx, tref, data_range=peak)) == pytest.approx(expected_psnr, abs=1e-6)


def test_peak_is_the_references_range_not_the_reconstructions() -> None:
    ref = torch.from_numpy(shepp_logan(32).astype(np.float64))[None]
    x = ref.clone()
    x[0, 0, 0] = 100.0  # a reconstruction with a huge range must not raise its own peak
    mse = float(torch.mean((x - ref) ** 2))
    assert float(psnr(x, ref)) == pytest.approx(10 * np.log10(1.0 / mse))
    assert float(psnr(x, ref, data_range=2.0)) == pytest.approx(10 * np.log10(4.0 / mse))


def test_batched_equals_per_image_and_channels() -> None:
    pairs = [_pair(s) for s in range(3)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]))
    ref = torch.from_numpy(np.stack([p[1] for p in pairs]))
    for metric in (psnr, ssim, relative_l2, linf_error):
        batched = metric(x, ref)
        assert batched.shape == (3,)
        for i in range(3):
            torch.testing.assert_close(batched[i : i + 1], metric(x[i : i + 1], ref[i : i + 1]))
        torch.testing.assert_close(metric(x[:, None], ref[:, None]), batched)


def test_roi_versions() -> None:
    x, ref = _pair(0)
    tx, tref = torch.from_numpy(x)[None], torch.from_numpy(ref)[None]
    everywhere = torch.ones(64, 64, dtype=torch.bool)
    for metric in (psnr, ssim, relative_l2, linf_error):
        torch.testing.assert_close(metric(tx, tref, roi=everywhere), metric(tx, tref))
    roi = torch.zeros(64, 64, dtype=torch.bool)
    roi[20:30, 10:40] = True
    diff = (tx - tref)[0][roi]
    assert float(linf_error(tx, tref, roi=roi)) == pytest.approx(float(diff.abs().max()))
    expected_rel = float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(tref[0][roi]))
    assert float(relative_l2(tx, tref, roi=roi)) == pytest.approx(expected_rel)
    peak = float(tref.max() - tref.min())
    expected_psnr = 10 * np.log10(peak**2 / float(torch.mean(diff**2)))
    assert float(psnr(tx, tref, roi=roi)) == pytest.approx(expected_psnr)
    # ROI-SSIM is the mean of skimage's full SSIM map over the ROI
    _, full_map = structural_similarity(
        x,
        ref,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=peak,
        full=True,
    )
    assert float(ssim(tx, tref, roi=roi)) == pytest.approx(full_map[roi.numpy()].mean(), abs=1e-3)


def test_complex_inputs_use_magnitudes() -> None:
    x, ref = _pair(1)
    phase = np.exp(1j * np.linspace(0, 2, x.size)).reshape(x.shape)
    tz = torch.from_numpy(x * phase)[None]
    tref = torch.from_numpy(ref * phase)[None]
    torch.testing.assert_close(
        psnr(tz, tref), psnr(torch.from_numpy(np.abs(x))[None], torch.from_numpy(ref)[None])
    )


def test_errors() -> None:
    a = torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(a, torch.rand(2, 16, 15))
    with pytest.raises(ValueError, match="roi must be a boolean"):
        psnr(a, a, roi=torch.ones(16, 16))
    with pytest.raises(ValueError, match="selects no pixel"):
        psnr(a, a, roi=torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="larger than the 11-pixel"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    roi = torch.zeros(16, 16, dtype=torch.bool)
    roi[0, 0] = True
    with pytest.raises(ValueError, match="farther than 5 pixels"):
        ssim(a, a, roi=roi)
