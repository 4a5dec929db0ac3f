"""Localized damage: what a whole-image PSNR hides (a fake lesion on a small area).

Sliding square windows of a fraction of the image side, half-overlapping. Per window, against
the ground truth ``x``, the clean reconstruction ``f(y)`` and the perturbed one ``f(y + e)``:

* the *local error increase* ``10 log10(mse_w(f(y + e), x) / max(mse_w(f(y), x), mse(f(y), x)))``
  in dB: how much the window's squared error grew, measured against the larger of the window's
  own clean error and the whole image's (so that a window the clean reconstruction happens to
  get exactly right, such as empty background, does not turn a faint change into a large
  ratio);
* the *local relative change* ``||f(y + e) - f(y)||_w / ||f(y)||_w``, with ``||f(y)||_w`` at
  least what an average window of the image holds (the same guard).

The worst window is the one whose error grew most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LocalDamage", "local_damage", "window_change", "window_masks", "window_size"]


def window_size(shape: tuple[int, ...], fraction: float) -> tuple[int, int]:
    """Window side and stride in pixels for images ``[..., H, W]``."""
    side = min(shape[-2:])
    w = max(4, round(side * fraction))
    if w > side:
        raise ValueError(
            f"perturbation.local.window: a {w}-pixel window does not fit the "
            f"{shape[-2]}x{shape[-1]} image"
        )
    return w, max(1, w // 2)


@dataclass
class LocalDamage:
    """Per image: the worst window ``[row0, col0, row1, col1]``, its error increase (dB) and
    its relative change."""

    boxes: Tensor
    error_increase_db: Tensor
    change: Tensor


def _pool(t: Tensor, w: int, stride: int) -> Tensor:
    pooled: Tensor = F.avg_pool2d(t.unsqueeze(1), w, stride=stride)[:, 0]
    return pooled


def _boxes(index: Tensor, cols: int, w: int, stride: int) -> Tensor:
    rows, cs = index // cols, index % cols
    return torch.stack([rows * stride, cs * stride, rows * stride + w, cs * stride + w], 1)


def _change_map(clean: Tensor, perturbed: Tensor, w: int, stride: int) -> Tensor:
    energy = _pool(clean.square(), w, stride)
    floor = clean.square().flatten(1).mean(1).reshape(-1, 1, 1)
    diff = _pool((perturbed - clean).square(), w, stride)
    return (diff / torch.maximum(energy, floor).clamp_min(1e-30)).sqrt()


def local_damage(clean: Tensor, perturbed: Tensor, truth: Tensor, fraction: float) -> LocalDamage:
    """The worst window per image (images ``[B, H, W]``, real)."""
    w, stride = window_size(tuple(truth.shape), fraction)
    err_clean = (clean - truth).square()
    mse_clean = _pool(err_clean, w, stride)
    mse_pert = _pool((perturbed - truth).square(), w, stride)
    reference = torch.maximum(mse_clean, err_clean.flatten(1).mean(1).reshape(-1, 1, 1))
    increase = 10 * torch.log10(mse_pert.clamp_min(1e-30) / reference.clamp_min(1e-30))
    cols = increase.shape[-1]
    worst = increase.flatten(1).argmax(1)
    change = _change_map(clean, perturbed, w, stride).flatten(1)
    images = torch.arange(truth.shape[0], device=truth.device)
    return LocalDamage(
        boxes=_boxes(worst, cols, w, stride).cpu(),
        error_increase_db=increase.flatten(1)[images, worst].cpu(),
        change=change[images, worst].cpu(),
    )


def window_masks(shape: tuple[int, ...], boxes: Tensor, device: torch.device) -> Tensor:
    """One 0/1 weight map ``[B, H, W]`` per image, 1 inside its box."""
    masks = torch.zeros((len(boxes), *shape[-2:]), device=device)
    for i, (r0, c0, r1, c1) in enumerate(boxes.tolist()):
        masks[i, r0:r1, c0:c1] = 1.0
    return masks


def window_change(clean: Tensor, perturbed: Tensor, boxes: Tensor) -> Tensor:
    """The local relative change inside each image's box (same guard as :func:`local_damage`)."""
    out = torch.empty(len(boxes))
    floor = clean.square().flatten(1).mean(1)
    for i, (r0, c0, r1, c1) in enumerate(boxes.tolist()):
        d = (perturbed[i, r0:r1, c0:c1] - clean[i, r0:r1, c0:c1]).square().mean()
        e = torch.maximum(clean[i, r0:r1, c0:c1].square().mean(), floor[i])
        out[i] = math.sqrt(float(d / e.clamp_min(1e-30)))
    return out
