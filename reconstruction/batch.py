"""Per-item helpers for batched tensors ``[B, ...]``: norms and real inner products,
broadcasting a per-item value, seeded Gaussian perturbations of a given norm."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dots", "gaussian", "norms", "per_item"]


def _real(t: Tensor) -> Tensor:
    """Complex tensors through their real view (real ones as they are), one row per item."""
    flat = torch.view_as_real(t.resolve_conj()) if t.is_complex() else t
    return flat.reshape(t.shape[0], -1)


def norms(t: Tensor) -> Tensor:
    """The l2 norm of each item, ``[B]``."""
    # through the real view: the same norm, and about 30x faster on CPUs than vector_norm's
    # complex kernel
    out: Tensor = torch.linalg.vector_norm(_real(t), dim=1)
    return out


def dots(a: Tensor, b: Tensor) -> Tensor:
    """The real inner product ``Re <a, b>`` of each pair of items, ``[B]`` (complex tensors as
    pairs of reals: the geometry of a search that moves real and imaginary parts freely)."""
    return (_real(a) * _real(b)).sum(1)


def per_item(v: Tensor, like: Tensor) -> Tensor:
    """``v [B]`` shaped to broadcast against ``like [B, ...]``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def gaussian(like: Tensor, size: Tensor, gen: torch.Generator) -> Tensor:
    """Seeded Gaussian noise shaped like ``like`` (complex where it is), drawn on the CPU, with
    the norm ``size [B]`` per item."""
    n = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    return n * per_item(size / norms(n), n)
