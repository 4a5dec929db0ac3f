"""Planted networks whose instabilities are known by construction, and an independent,
deliberately long reference search to measure the product's search against.

The networks take the zero-filled image ``[B, 2, H, W]`` of a mask closed under ``k -> -k``
(``conftest.symmetric_mask``): for real objects its imaginary part is zero, so anything the
networks read from it is perturbation. Each has an ordinary *decoy* response (a moderate gain
along one smooth direction, which a gradient search finds first) and, for the unstable ones, a
hidden response elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from reconstruction.batch import per_item
from reconstruction.operators import LinearOperator
from reconstruction.operators.base import complex_dtype

__all__ = ["BeyondNorm", "Decoy", "Switch", "gaussian_blob", "reference_search"]


def gaussian_blob(size: int, row: float, col: float, sigma: float) -> Tensor:
    grid = torch.arange(size, dtype=torch.float32)
    return torch.exp(-((grid[:, None] - row) ** 2 + (grid[None, :] - col) ** 2) / (2 * sigma**2))


def _direction(size: int, seed: int, smooth: float = 4.0) -> Tensor:
    """A seeded smooth unit image (low-pass filtered noise)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, size, size, generator=gen)
    k = int(3 * smooth) | 1
    g = gaussian_blob(k, k // 2, k // 2, smooth)
    d = torch.nn.functional.conv2d(noise, (g / g.sum())[None, None], padding=k // 2)[0, 0]
    unit: Tensor = d / d.norm()
    return unit


class Decoy(torch.nn.Module):
    """Zero-filled image plus ``gain`` times the imaginary part along one smooth direction
    (the decoy): a Lipschitz map with a known worst direction and no hidden response."""

    decoy: Tensor

    def __init__(self, size: int, gain: float = 3.0, seed: int = 11) -> None:
        super().__init__()
        self.gain = gain
        self.register_buffer("decoy", _direction(size, seed))

    def base(self, x: Tensor) -> Tensor:
        along = (x[:, 1] * self.decoy).sum((-2, -1)).reshape(-1, 1, 1)
        out: Tensor = x[:, 0] + self.gain * along * self.decoy
        return out

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.base(x), torch.zeros_like(x[:, 0])], 1)


class Switch(Decoy):
    """The decoy, plus a bright blob (``amplitude``, a few pixels wide) once the imaginary part's
    component along a second, hidden direction passes ``threshold`` times the image's norm: a
    saturating gate, nearly flat (and so nearly invisible to gradients) while it is closed."""

    trigger: Tensor
    blob: Tensor

    def __init__(
        self,
        size: int,
        threshold: float,
        amplitude: float = 0.5,
        sharpness: float = 8.0,
        seed: int = 11,
    ) -> None:
        super().__init__(size, seed=seed)
        self.threshold, self.amplitude, self.sharpness = threshold, amplitude, sharpness
        self.register_buffer("trigger", _direction(size, seed + 1, smooth=3.0))
        self.register_buffer("blob", gaussian_blob(size, 0.4 * size, 0.55 * size, size / 32))

    def gate(self, x: Tensor) -> Tensor:
        s = (x[:, 1] * self.trigger).sum((-2, -1)) / x[:, 0].flatten(1).norm(dim=1)
        return torch.sigmoid(self.sharpness * (s.abs() / self.threshold - 1.0))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x) + self.amplitude * self.gate(x).reshape(-1, 1, 1) * self.blob
        return torch.stack([out, torch.zeros_like(out)], 1)


class BeyondNorm(Decoy):
    """The decoy, plus ``gain`` times the part of the imaginary image's low-frequency content
    that exceeds ``threshold`` times the image's norm (a ReLU on a norm): exactly the decoy for
    small perturbations, a large amplification only beyond a norm."""

    def __init__(self, size: int, threshold: float, gain: float = 30.0, seed: int = 11) -> None:
        super().__init__(size, seed=seed)
        self.threshold, self.big = threshold, gain

    def forward(self, x: Tensor) -> Tensor:
        low = torch.nn.functional.avg_pool2d(x[:, 1:2], 8, stride=8)
        scale = x[:, 0].flatten(1).norm(dim=1) / 8
        excess = torch.relu(low.flatten(1).norm(dim=1) / scale - self.threshold)
        up = torch.nn.functional.interpolate(low, scale_factor=8.0, mode="nearest")[:, 0]
        size = per_item(low.flatten(1).norm(dim=1).clamp_min(1e-12), up)
        out = self.base(x) + self.big * per_item(excess * scale, up) * up / size / 8
        return torch.stack([out, torch.zeros_like(out)], 1)


def reference_search(
    f: Callable[[Tensor], Tensor],
    op: LinearOperator,
    x: Tensor,
    eps: float,
    *,
    restarts: int = 8,
    iterations: int = 400,
    seed: int = 1234,
) -> tuple[Tensor, int]:
    """A plain, long search on the image-domain ball ``||r|| <= eps ||x||``, written apart from
    the product's, one image at a time, from seeded Gaussian starts on the sphere. Even
    restarts: projected Adam (the auditor's kind of search) with a per-coordinate step of a
    quarter of the radius over ``sqrt(n)``; odd restarts: projected gradient ascent with
    steps of a quarter of the radius along the normalised gradient (Adam's diagonal steps can
    stall short of a constrained maximum; these cannot). Both with the step cosine-decayed to
    zero, the best iterate of every restart kept. Returns the worst relative output change per
    image and the forward+backward passes spent per image."""
    dtype = complex_dtype(x.dtype) if op.in_complex else x.dtype
    n = math.prod(x.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(x.shape[0])
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        y = op.A(xi)
        with torch.no_grad():
            clean = f(y)
        radius = float(eps * xi.norm())
        for k in range(restarts):
            r = torch.randn(xi.shape, generator=gen, dtype=dtype)
            r = (r * radius / r.norm()).requires_grad_(True)
            adam = k % 2 == 0
            opt = torch.optim.Adam([r], lr=0.25 * radius / math.sqrt(n)) if adam else None
            for t in range(iterations):
                decay = 0.5 * (1 + math.cos(math.pi * t / iterations))
                change = (f(y + op.A(r)) - clean).norm() / clean.norm()
                best[i] = max(float(best[i]), float(change.detach()))
                (grad,) = torch.autograd.grad(change.square(), r)
                with torch.no_grad():
                    if opt is not None:
                        for group in opt.param_groups:
                            group["lr"] = 0.25 * radius / math.sqrt(n) * decay
                        r.grad = -grad
                        opt.step()
                    else:
                        r.add_(0.25 * radius * decay * grad / grad.norm().clamp_min(1e-30))
                    r.mul_(min(1.0, radius / float(r.norm())))
    return best, restarts * iterations
