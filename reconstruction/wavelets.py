"""Orthogonal 2-D discrete wavelet transform in torch (periodic boundary), for CS baselines.

The transform is the standard multi-level (Mallat) 2-D DWT with periodic extension
("periodization" in PyWavelets): for image sizes divisible by ``2**levels`` it is orthonormal,
so its adjoint is its inverse and ``||W x|| = ||x||``. Filter banks come from PyWavelets, which
is also the reference in the tests (the coefficients agree with ``pywt.wavedec2(...,
mode="periodization")``).

Coefficients are packed into one array of the image's shape (the layout of
``pywt.coeffs_to_array``): at each level the approximation sits in the top-left quadrant and is
decomposed again; the details of that level fill the other three quadrants. ``approximation_mask``
marks the coarsest approximation, which CS regularisers usually leave unpenalised.

Why our own code rather than ``ptwt``: the transform is ~80 lines on top of ``conv2d``, needs no
extra dependency, runs batched on CPU and CUDA, is differentiable (twice), and packs
coefficients the way the solvers need (one tensor, one soft-threshold).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from reconstruction.operators.base import in_cpu_chunks

__all__ = ["Wavelet2D", "max_levels"]


@functools.lru_cache(maxsize=16)
def _filters(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import pywt

    try:
        wavelet = pywt.Wavelet(name)
    except ValueError as exc:
        raise ValueError(f"unknown wavelet {name!r}: {exc}") from exc
    if not wavelet.orthogonal:
        raise ValueError(f"wavelet {name!r} is not orthogonal; use e.g. 'haar', 'db2', 'db4'")
    return tuple(wavelet.dec_lo), tuple(wavelet.dec_hi)


def _polyphase_synthesis(lo: tuple[float, ...], hi: tuple[float, ...]) -> tuple[Tensor, int]:
    """Synthesis weights ``[2 phases, 2 bands, K]`` and the circular padding they need.

    Analysis computes ``a[i] = sum_n lo[2i + L/2 - n] x[n]`` (indices mod N). Its adjoint is
    ``x[2m + p] = sum_j lo[2j + L/2 - p] a[m + j] + hi[...] d[m + j]``: for each phase ``p`` a
    correlation over the taps ``j`` where the filter index lies in ``[0, L)``.
    """
    length, half = len(lo), len(lo) // 2
    taps = [
        j for j in range(-length, length) if any(0 <= 2 * j + half - p < length for p in (0, 1))
    ]
    first, last = taps[0], taps[-1]
    if first != -last:  # symmetric taps keep the padding symmetric
        first, last = -max(-first, last), max(-first, last)
    weights = torch.zeros(2, 2, last - first + 1, dtype=torch.float64)
    for p in (0, 1):
        for t, j in enumerate(range(first, last + 1)):
            k = 2 * j + half - p
            if 0 <= k < length:
                weights[p, 0, t] = lo[k]
                weights[p, 1, t] = hi[k]
    return weights, -first


def max_levels(size: int, wavelet: str = "db4") -> int:
    """Deepest decomposition for which the coarsest band is at least one filter long and
    every level halves exactly."""
    length = len(_filters(wavelet)[0])
    levels = 0
    while size % 2 == 0 and size // 2 >= length - 1:
        size //= 2
        levels += 1
    return levels


class Wavelet2D:
    """Orthonormal periodic 2-D DWT of real batches ``[B, H, W]`` (complex: real and imaginary
    parts separately). ``levels`` defaults to ``min(4, max_levels)``; every level must halve
    both sides exactly.

    >>> w = Wavelet2D((64, 64), "db4", levels=3)
    >>> x = torch.randn(2, 64, 64, dtype=torch.float64)
    >>> c = w.forward(x)
    >>> bool(torch.allclose(w.inverse(c), x)), bool(torch.isclose(c.norm(), x.norm()))
    (True, True)
    """

    def __init__(self, shape: tuple[int, int], wavelet: str = "db4", levels: int | None = None):
        self.shape = (int(shape[0]), int(shape[1]))
        self.wavelet = wavelet
        lo, hi = _filters(wavelet)
        self.filter_length = len(lo)
        deepest = min(max_levels(s, wavelet) for s in self.shape)
        self.levels = min(4, deepest) if levels is None else int(levels)
        if not 1 <= self.levels <= deepest:
            raise ValueError(
                f"{self.levels} levels of {wavelet} do not fit a {self.shape[0]}x{self.shape[1]} "
                f"image (at most {deepest}: each level halves the sides exactly and the "
                f"coarsest band must be at least {self.filter_length - 1} pixels)"
            )
        # analysis: correlation with the reversed filters after circular padding
        self._bank = torch.tensor([lo[::-1], hi[::-1]], dtype=torch.float64)
        self._synthesis_bank, self._synthesis_pad = _polyphase_synthesis(lo, hi)
        self._cache: dict[tuple[str, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def _weights(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(analysis rows, analysis columns, synthesis rows, synthesis columns) conv weights."""
        key = (str(like.device), like.dtype)
        if key not in self._cache:
            bank = self._bank.to(device=like.device, dtype=like.dtype)
            syn = self._synthesis_bank.to(device=like.device, dtype=like.dtype)
            k = syn.shape[-1]
            self._cache[key] = (
                bank.view(2, 1, 1, -1),
                bank.view(2, 1, -1, 1),
                syn.view(2, 2, 1, k),
                syn.view(2, 2, k, 1),
            )
        return self._cache[key]

    # ------------------------------------------------------------------ one level
    def _analysis(self, x: Tensor) -> Tensor:
        """``[N, h, w]`` -> ``[N, 4, h/2, w/2]`` subbands (aa, ad, da, dd)."""
        rows, cols, _, _ = self._weights(x)
        pad = self.filter_length // 2 - 1
        n, h, w = x.shape
        t = F.pad(x.unsqueeze(1), (pad, pad, 0, 0), mode="circular")
        t = F.conv2d(t, rows, stride=(1, 2))  # [N, 2, h, w/2]: lo, hi along the width
        t = t.reshape(n * 2, 1, h, w // 2)
        t = F.pad(t, (0, 0, pad, pad), mode="circular")
        t = F.conv2d(t, cols, stride=(2, 1))  # [2N, 2, h/2, w/2]: lo, hi along the height
        # order (height, width): (lo,lo)=aa, (lo,hi)=ad, (hi,lo)=da, (hi,hi)=dd
        return t.reshape(n, 2, 2, h // 2, w // 2).transpose(1, 2).reshape(n, 4, h // 2, w // 2)

    def _synthesis(self, bands: Tensor) -> Tensor:
        """Adjoint (= inverse) of ``_analysis``, in polyphase form: each output phase (even,
        odd sample) is a short circular correlation of the two input bands, so plain strided-
        free convolutions do the work (transposed convolutions are much slower on CPUs)."""
        _, _, rows, cols = self._weights(bands)
        pad = self._synthesis_pad
        n, _, h2, w2 = bands.shape
        # [N*2 (width lo/hi), 2 (height lo/hi), h/2, w/2]
        t = bands.reshape(n, 2, 2, h2, w2).transpose(1, 2).reshape(n * 2, 2, h2, w2)
        t = F.conv2d(F.pad(t, (0, 0, pad, pad), mode="circular"), cols)  # phases along height
        t = t.transpose(1, 2).reshape(n, 2, 2 * h2, w2)
        t = F.conv2d(F.pad(t, (pad, pad, 0, 0), mode="circular"), rows)  # phases along width
        return t.permute(0, 2, 3, 1).reshape(n, 2 * h2, 2 * w2)

    # ------------------------------------------------------------------ public
    def forward(self, x: Tensor) -> Tensor:
        """Packed coefficients of ``x`` ``[B, H, W]`` (real or complex)."""
        if x.is_complex():  # real and imaginary parts as one batch
            parts = self.forward(torch.cat([x.real, x.imag]))
            return torch.complex(*parts.chunk(2))
        self._check(x)
        return in_cpu_chunks(self._forward, x, 4 * x[0].numel())

    def _forward(self, x: Tensor) -> Tensor:
        details = []
        approx = x
        for _ in range(self.levels):
            bands = self._analysis(approx)
            approx = bands[:, 0]
            details.append(bands[:, 1:])
        packed = approx
        for d in reversed(details):
            top = torch.cat([packed, d[:, 0]], dim=-1)
            bottom = torch.cat([d[:, 1], d[:, 2]], dim=-1)
            packed = torch.cat([top, bottom], dim=-2)
        return packed

    def inverse(self, c: Tensor) -> Tensor:
        """Image from packed coefficients (the adjoint and inverse of :meth:`forward`)."""
        if c.is_complex():
            parts = self.inverse(torch.cat([c.real, c.imag]))
            return torch.complex(*parts.chunk(2))
        self._check(c)
        return in_cpu_chunks(self._inverse, c, 4 * c[0].numel())

    def _inverse(self, c: Tensor) -> Tensor:
        h, w = self.shape
        sizes = [(h >> (k + 1), w >> (k + 1)) for k in range(self.levels)]
        h_c, w_c = sizes[-1]
        approx = c[:, :h_c, :w_c]
        for h2, w2 in reversed(sizes):
            bands = torch.stack(
                [
                    approx,
                    c[:, :h2, w2 : 2 * w2],
                    c[:, h2 : 2 * h2, :w2],
                    c[:, h2 : 2 * h2, w2 : 2 * w2],
                ],
                dim=1,
            )
            approx = self._synthesis(bands)
        return approx

    def approximation_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """Boolean ``[H, W]``: True on the coarsest approximation band."""
        mask = torch.zeros(self.shape, dtype=torch.bool, device=device)
        mask[: self.shape[0] >> self.levels, : self.shape[1] >> self.levels] = True
        return mask

    def _check(self, t: Tensor) -> None:
        if t.ndim != 3 or tuple(t.shape[1:]) != self.shape:
            raise ValueError(
                f"Wavelet2D{self.shape} expects [B, {self.shape[0]}, {self.shape[1]}], "
                f"got {list(t.shape)}"
            )

    def __repr__(self) -> str:
        return f"Wavelet2D({self.shape}, {self.wavelet!r}, levels={self.levels})"
