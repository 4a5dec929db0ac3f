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

Why our own code rather than ``ptwt`` (1.0.1, conv-based) or PyWavelets (C, NumPy only): the
transform is ~100 lines of slicing arithmetic, needs no extra dependency, runs batched on CPU and
CUDA, is differentiable (twice, in eager mode), packs coefficients the way the solvers need (one
tensor, one soft-threshold), and compiles with ``torch.compile`` into fused loops that are about
20x faster than convolution kernels for these 1-channel, 8-tap filters on CPUs (with eager conv2d
a FISTA iteration spent half its time in the wavelet; PyWavelets was no faster than eager torch).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from reconstruction.operators.base import in_cpu_chunks

__all__ = ["Wavelet2D", "compile_enabled", "max_levels"]

Filter = tuple[float, ...]
Taps = tuple[tuple[Filter, Filter], tuple[Filter, Filter]]


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


def _polyphase_synthesis(lo: Filter, hi: Filter) -> tuple[Taps, int]:
    """Synthesis taps ``[phase][band][t]`` and the circular padding they need.

    Analysis computes ``a[i] = sum_n lo[2i + L/2 - n] x[n]`` (indices mod N). Its adjoint is
    ``x[2m + p] = sum_j lo[2j + L/2 - p] a[m + j] + hi[...] d[m + j]``: for each phase ``p`` a
    correlation over the taps ``j`` where the filter index lies in ``[0, L)`` (zero elsewhere).
    """
    length, half = len(lo), len(lo) // 2
    reach = max(
        abs(j)
        for j in range(-length, length)
        if any(0 <= 2 * j + half - p < length for p in (0, 1))
    )

    def phase(p: int) -> tuple[Filter, Filter]:
        ks = [2 * j + half - p for j in range(-reach, reach + 1)]
        return (
            tuple(lo[k] if 0 <= k < length else 0.0 for k in ks),
            tuple(hi[k] if 0 <= k < length else 0.0 for k in ks),
        )

    return (phase(0), phase(1)), reach


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
        self._lo, self._hi = lo, hi
        self._synthesis_taps, self._pad = _polyphase_synthesis(lo, hi)

    # ------------------------------------------------------------------ public
    def forward(self, x: Tensor) -> Tensor:
        """Packed coefficients of ``x`` ``[B, H, W]`` (real or complex)."""
        if x.is_complex():  # real and imaginary parts as one batch
            parts = self.forward(torch.cat([x.real, x.imag]))
            return torch.complex(*parts.chunk(2))
        self._check(x)
        return in_cpu_chunks(self._forward, x, 4 * x[0].numel())

    def _forward(self, x: Tensor) -> Tensor:
        return _kernel(_forward_levels, x)(x, self._lo, self._hi, self.levels)

    def inverse(self, c: Tensor) -> Tensor:
        """Image from packed coefficients (the adjoint and inverse of :meth:`forward`)."""
        if c.is_complex():
            parts = self.inverse(torch.cat([c.real, c.imag]))
            return torch.complex(*parts.chunk(2))
        self._check(c)
        return in_cpu_chunks(self._inverse, c, 4 * c[0].numel())

    def _inverse(self, c: Tensor) -> Tensor:
        return _kernel(_inverse_levels, c)(c, self._synthesis_taps, self._pad, self.levels)

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


# ------------------------------------------------------------------------------ kernels
# Filtering is written as sums of strided slices: in eager mode as fast as conv2d on CPUs
# (whose kernels are inefficient for 1-channel, 8-tap filters), and under torch.compile fused
# into one vectorised loop per band, about 20x faster (benchmarks/baselines_vs_sigpy.py).


def _take(t: Tensor, dim: int, start: int, stop: int | None, step: int = 1) -> Tensor:
    index: list[slice] = [slice(None)] * t.ndim
    index[dim] = slice(start, stop, step)
    return t[tuple(index)]


def _circular(t: Tensor, dim: int, pad: int) -> Tensor:
    if pad == 0:
        return t
    size = t.shape[dim]
    return torch.cat([_take(t, dim, size - pad, None), t, _take(t, dim, 0, pad)], dim=dim)


def _analyse(x: Tensor, dim: int, lo: Filter, hi: Filter) -> tuple[Tensor, Tensor]:
    """One periodic analysis step along ``dim``: ``a[i] = sum_k lo[k] x[2i + L/2 - k]``."""
    length, half = len(lo), x.shape[dim] // 2
    padded = _circular(x, dim, length // 2 - 1)
    taps = [_take(padded, dim, j, j + 2 * half, 2) for j in range(length)]
    approx = _weighted_sum(lo[::-1], taps)
    detail = _weighted_sum(hi[::-1], taps)
    return approx, detail


def _synthesise(a: Tensor, d: Tensor, dim: int, taps: Taps, pad: int) -> Tensor:
    """Adjoint of :func:`_analyse` in polyphase form (see :func:`_polyphase_synthesis`)."""
    half = a.shape[dim]
    bands = (_circular(a, dim, pad), _circular(d, dim, pad))
    phases = []
    for p in (0, 1):
        weights = [w for band in (0, 1) for w in taps[p][band]]
        slices = [
            _take(bands[band], dim, t, t + half)
            for band in (0, 1)
            for t in range(len(taps[p][band]))
        ]
        phases.append(_weighted_sum(weights, slices))
    if dim == -1:
        return torch.stack(phases, dim=-1).flatten(-2)
    return torch.stack(phases, dim=-2).flatten(-3, -2)


def _weighted_sum(weights: Sequence[float], terms: Sequence[Tensor]) -> Tensor:
    pairs = [(w, t) for w, t in zip(weights, terms, strict=True) if w != 0.0]
    total = pairs[0][1] * pairs[0][0]
    for w, t in pairs[1:]:
        total = total + w * t
    return total


def _forward_levels(x: Tensor, lo: Filter, hi: Filter, levels: int) -> Tensor:
    """Packed multi-level coefficients of real ``[N, H, W]`` images."""
    details = []
    approx = x
    for _ in range(levels):
        a_w, d_w = _analyse(approx, -1, lo, hi)  # along the width
        approx, da = _analyse(a_w, -2, lo, hi)  # along the height
        ad, dd = _analyse(d_w, -2, lo, hi)
        details.append((ad, da, dd))
    packed = approx
    for ad, da, dd in reversed(details):
        packed = torch.cat([torch.cat([packed, ad], dim=-1), torch.cat([da, dd], dim=-1)], dim=-2)
    return packed


def _inverse_levels(c: Tensor, taps: Taps, pad: int, levels: int) -> Tensor:
    """Images from packed coefficients (inverse of :func:`_forward_levels`)."""
    h, w = c.shape[-2:]
    approx = c[:, : h >> levels, : w >> levels]
    for k in reversed(range(levels)):
        h2, w2 = h >> (k + 1), w >> (k + 1)
        ad = c[:, :h2, w2 : 2 * w2]
        da = c[:, h2 : 2 * h2, :w2]
        dd = c[:, h2 : 2 * h2, w2 : 2 * w2]
        a_w = _synthesise(approx, da, -2, taps, pad)
        d_w = _synthesise(ad, dd, -2, taps, pad)
        approx = _synthesise(a_w, d_w, -1, taps, pad)
    return approx


_COMPILED: dict[Callable[..., Tensor], Callable[..., Tensor]] = {}


def compile_enabled() -> bool:
    """Whether the wavelet kernels run compiled (``torch.compile``) where they can: set
    ``RECON_AUDIT_COMPILE=0`` to turn it off (the test suite does, to spare compile time)."""
    return os.environ.get("RECON_AUDIT_COMPILE", "1") != "0"


def _kernel(fn: Callable[..., Tensor], t: Tensor) -> Callable[..., Tensor]:
    """``fn`` compiled with torch.compile on CPUs when enabled and no gradient is being recorded
    (the compiled kernels serve clean reconstructions; differentiated solves run eagerly and
    support higher-order gradients); the eager ``fn`` otherwise. Compilation happens once per
    input shape and dtype and is cached on disk by torch."""
    if (
        t.device.type != "cpu"  # GPUs run the eager slices well; compiling there is untested
        or not compile_enabled()
        or (torch.is_grad_enabled() and t.requires_grad)
    ):
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]
