"""Image-quality metrics, batched in torch: PSNR, SSIM, NMSE, relative l2 and l-infinity errors.

Conventions:

* Inputs are batches ``[B, H, W]`` or ``[B, C, H, W]``; every metric returns one value per batch
  item, shape ``[B]``. Complex inputs are compared as magnitudes.
* The PSNR peak and the SSIM ``data_range`` default to the *reference's* dynamic range
  (``max - min`` of each reference image), never the reconstruction's: a metric must not reward
  a reconstruction for changing its own range.
* ``roi`` (a boolean ``[H, W]`` or ``[B, H, W]`` mask) restricts a metric to a region of
  interest; the peak/data range stays that of the whole reference so ROI and whole-image values
  are on one scale.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linf_error", "nmse", "psnr", "relative_l2", "ssim"]


def _prepare(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {list(x.shape)} vs reference {list(ref.shape)}")
    if ref.ndim not in (3, 4):
        raise ValueError(f"expected [B, H, W] or [B, C, H, W], got {list(ref.shape)}")
    x = x.abs() if x.is_complex() else x
    ref = ref.abs() if ref.is_complex() else ref
    dtype = torch.promote_types(x.dtype, ref.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    x, ref = x.to(dtype), ref.to(dtype)
    if ref.ndim == 3:
        x, ref = x.unsqueeze(1), ref.unsqueeze(1)
    return x, ref


def _roi_weights(roi: Tensor | None, like: Tensor) -> Tensor:
    """Weights ``[B, 1, H, W]`` (1 inside the ROI, 0 outside)."""
    if roi is None:
        return torch.ones(
            (like.shape[0], 1, *like.shape[-2:]), dtype=like.dtype, device=like.device
        )
    r = torch.as_tensor(roi, device=like.device)
    if r.dtype != torch.bool:
        raise ValueError(f"roi must be a boolean mask, got {r.dtype}")
    if r.ndim == 2:
        r = r.expand(like.shape[0], *r.shape)
    if r.shape != (like.shape[0], *like.shape[-2:]):
        raise ValueError(f"roi shape {list(r.shape)} does not match images {list(like.shape)}")
    if not bool(r.flatten(1).any(dim=1).all()):
        raise ValueError("roi selects no pixel for at least one image")
    return r.unsqueeze(1).to(like.dtype)


def _data_range(ref: Tensor, data_range: float | Tensor | None) -> Tensor:
    if data_range is None:
        flat = ref.flatten(1)
        return flat.amax(dim=1) - flat.amin(dim=1)
    return torch.as_tensor(data_range, dtype=ref.dtype, device=ref.device).expand(ref.shape[0])


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-item mean of ``values [B, C, H, W]`` under ``weights [B, 1, H, W]``."""
    w = weights.expand_as(values)
    return (values * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)


def psnr(
    x: Tensor,
    ref: Tensor,
    *,
    data_range: float | Tensor | None = None,
    roi: Tensor | None = None,
) -> Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``, peak = ``data_range``.

    >>> ref = torch.zeros(1, 4, 4); ref[0, 0, 0] = 1.0
    >>> [round(float(v), 4) for v in psnr(ref + 0.1, ref)]
    [20.0]
    """
    x, ref = _prepare(x, ref)
    mse = _weighted_mean((x - ref) ** 2, _roi_weights(roi, ref))
    peak = _data_range(ref, data_range)
    return 10.0 * torch.log10(peak**2 / mse)


def relative_l2(x: Tensor, ref: Tensor, *, roi: Tensor | None = None) -> Tensor:
    """``||x - ref|| / ||ref||`` (inside ``roi`` when given)."""
    x, ref = _prepare(x, ref)
    w = _roi_weights(roi, ref).expand_as(ref)
    err = torch.sqrt(((x - ref) ** 2 * w).flatten(1).sum(dim=1))
    return err / torch.sqrt((ref**2 * w).flatten(1).sum(dim=1))


def nmse(x: Tensor, ref: Tensor, *, roi: Tensor | None = None) -> Tensor:
    """Normalised mean squared error ``||x - ref||^2 / ||ref||^2`` (fastMRI's NMSE).

    >>> ref = torch.ones(1, 2, 2)
    >>> [round(float(v), 4) for v in nmse(ref * 1.1, ref)]
    [0.01]
    """
    return relative_l2(x, ref, roi=roi) ** 2


def linf_error(x: Tensor, ref: Tensor, *, roi: Tensor | None = None) -> Tensor:
    """``max |x - ref|`` (inside ``roi`` when given)."""
    x, ref = _prepare(x, ref)
    w = _roi_weights(roi, ref).expand_as(ref)
    return ((x - ref).abs() * w).flatten(1).amax(dim=1)


def _gaussian_kernel(
    sigma: float, truncate: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _filter(images: Tensor, kernel: Tensor) -> Tensor:
    """Separable 'valid' filtering of ``[N, 1, H, W]`` images."""
    n = kernel.numel()
    out = F.conv2d(images, kernel.view(1, 1, n, 1))
    return F.conv2d(out, kernel.view(1, 1, 1, n))


def ssim(
    x: Tensor,
    ref: Tensor,
    *,
    data_range: float | Tensor | None = None,
    roi: Tensor | None = None,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
    window: Literal["gaussian", "uniform"] = "gaussian",
    win_size: int = 7,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5).

    Local statistics use population (not sample) covariances, and the SSIM map is averaged over
    the pixels whose window lies inside the image (the border of width ``radius`` is dropped),
    which is ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, data_range=...)``. With ``roi`` the map is averaged over the
    ROI's pixels in that interior. Channels are averaged.

    ``window="uniform"``: a ``win_size`` square uniform window with sample covariances, which
    is skimage's default ``structural_similarity(..., data_range=...)`` (fastMRI's SSIM).
    """
    x, ref = _prepare(x, ref)
    if window == "uniform":
        kernel = torch.full((win_size,), 1.0 / win_size, dtype=ref.dtype, device=ref.device)
        # sample covariances: skimage's cov_norm = N / (N - 1) over the window's N pixels
        cov_norm = win_size**2 / (win_size**2 - 1)
    else:
        kernel = _gaussian_kernel(sigma, truncate, ref.dtype, ref.device)
        cov_norm = 1.0
    radius = kernel.numel() // 2
    if min(ref.shape[-2:]) <= 2 * radius:
        raise ValueError(f"images must be larger than the {kernel.numel()}-pixel SSIM window")
    b, c = ref.shape[:2]
    flat_x = x.reshape(b * c, 1, *x.shape[-2:])
    flat_r = ref.reshape(b * c, 1, *ref.shape[-2:])
    stacked = torch.cat([flat_x, flat_r, flat_x * flat_x, flat_r * flat_r, flat_x * flat_r])
    mu_x, mu_r, xx, rr, xr = _filter(stacked, kernel).split(b * c)
    var_x = cov_norm * (xx - mu_x**2)
    var_r = cov_norm * (rr - mu_r**2)
    cov = cov_norm * (xr - mu_x * mu_r)
    peak = _data_range(ref, data_range).repeat_interleave(c).view(-1, 1, 1, 1)
    c1 = (k1 * peak) ** 2
    c2 = (k2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2)
    )
    ssim_map = ssim_map.view(b, c, *ssim_map.shape[-2:])
    weights = _roi_weights(roi, ref)[..., radius:-radius, radius:-radius]
    if roi is not None and not bool((weights.flatten(1).sum(dim=1) > 0).all()):
        raise ValueError(f"roi has no pixel farther than {radius} pixels from the image border")
    return _weighted_mean(ssim_map, weights)
