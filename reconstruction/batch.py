"""Per-item helpers for batched tensors ``[B, ...]``: norms, broadcasting a per-item value,
seeded Gaussian perturbations of a given norm."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian", "norms", "per_item"]


def norms(t: Tensor) -> Tensor:
    """The l2 norm of each item, ``[B]``."""
    # complex tensors through their real view: the same norm, and about 30x faster on CPUs
    # than vector_norm's complex kernel
    flat = torch.view_as_real(t.resolve_conj()) if t.is_complex() else t
    out: Tensor = torch.linalg.vector_norm(flat.reshape(t.shape[0], -1), dim=1)
    return out


def per_item(v: Tensor, like: Tensor) -> Tensor:
    """``v [B]`` shaped to broadcast against ``like [B, ...]``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def gaussian(like: Tensor, size: Tensor, gen: torch.Generator) -> Tensor:
    """Seeded Gaussian noise shaped like ``like`` (complex where it is), drawn on the CPU, with
    the norm ``size [B]`` per item."""
    n = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    return n * per_item(size / norms(n), n)
