"""Planted networks whose instabilities are known by construction, and an independent,
deliberately long reference search to measure the product's search against.

The MRI networks take the zero-filled image ``[B, 2, H, W]`` of a mask closed under
``k -> -k`` (``conftest.symmetric_mask``): for real objects its imaginary part is zero, so
anything the networks read from it is perturbation. Each has an ordinary *decoy* response (a
moderate gain along one smooth direction, which a gradient search finds first) and, for the
unstable ones, a hidden response elsewhere.

The CT networks (``CT*``, parallel-beam Radon of :class:`ParallelBeamCT`, ``CT_SIZE`` pixels
from ``CT_ANGLES`` angles) have no such channel that is zero on every clean input: their
switches read a pattern that piecewise-constant objects and their projections barely contain
(a Nyquist checkerboard in the FBP image, a detector-alternating patch of the sinogram), which
is also the pattern their own smoothing removes, so the decoy dominates their gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from reconstruction.attacks import ThreatModel
from reconstruction.batch import per_item
from reconstruction.models import LoadedModel, Manifest, from_module
from reconstruction.operators import LinearOperator, ParallelBeamCT
from reconstruction.operators.base import complex_dtype

__all__ = [
    "CT_ANGLES",
    "CT_SIZE",
    "BeyondNorm",
    "CTDecoy",
    "CTDomain",
    "CTImageSwitch",
    "CTSinogramSwitch",
    "Decoy",
    "SaturatingSwitch",
    "Switch",
    "ct_subject",
    "gaussian_blob",
    "reference_search",
]


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


def band_pattern(mask: Tensor, seed: int, cutoff: float = 0.125) -> Tensor:
    """A seeded real unit image whose k-space lies on the sampled locations of a centred
    ``mask`` (closed under ``k -> -k``) beyond ``cutoff`` of the size from the centre (in
    ``|k_y| + |k_x|``): a high-frequency pattern inside the sampled band."""
    size = mask.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    k = torch.arange(size) - size // 2
    far = (k[:, None].abs() + k[None, :].abs()) > cutoff * size
    noise = torch.complex(
        torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    )
    z = noise * (far & mask.bool())
    image = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(z), norm="ortho")).real
    unit: Tensor = image / image.norm()
    return unit


class SaturatingSwitch(torch.nn.Module):
    """The zero-filled image's real part plus ``amplitude * tanh(<w, Re z> / temperature)``
    times a Gaussian blob: a switch on the *real* part, which every clean image feeds, so on
    most images it sits saturated on one side and its gradient there is exponentially small
    (``sech^2``); ``w`` is a seeded unit high-frequency pattern inside the sampled band
    (:func:`band_pattern`), so the Jacobian at the clean input is the identity path's flat
    spectrum (every in-band direction has singular value 1) lifted only slightly along ``w``:
    the switch's direction is not what power iteration returns. Tripping it means moving
    ``<w, Re z>`` across zero, against the sign the clean image gives it, by a perturbation
    along ``w`` (:attr:`trigger`, for a reference search that knows the construction)."""

    trigger: Tensor
    blob: Tensor

    def __init__(
        self,
        mask: Tensor,
        temperature: float,
        amplitude: float = 0.8,
        seed: int = 2,
        blob_sigma: float = 1.5,
    ) -> None:
        super().__init__()
        size = mask.shape[-1]
        self.temperature, self.amplitude = temperature, amplitude
        self.register_buffer("trigger", band_pattern(mask, seed))
        self.register_buffer("blob", gaussian_blob(size, 0.4 * size, 0.55 * size, blob_sigma))

    def gate(self, x: Tensor) -> Tensor:
        return torch.tanh((x[:, 0] * self.trigger).sum((-2, -1)) / self.temperature)

    def saturate(self, op: LinearOperator, x: Tensor, depth: float) -> Tensor:
        """Set the temperature so that the more saturated of the images ``x`` holds the switch
        ``depth`` temperatures from zero; returns the switch's argument ``<w, Re z>`` per image
        (``z`` the zero-filled image)."""
        argument = (op.A_adjoint(op.A(x)).real * self.trigger).sum((-2, -1))
        self.temperature = float(argument.abs().max()) / depth
        return argument

    def forward(self, x: Tensor) -> Tensor:
        out = x[:, 0] + self.amplitude * self.gate(x).reshape(-1, 1, 1) * self.blob
        return torch.stack([out, torch.zeros_like(out)], 1)


#: the planted CT networks' geometry: small images from few parallel-beam angles
CT_SIZE = 64
CT_ANGLES = 30
CTDomain = Literal["image", "measurements"]


def ct_manifest(domain: CTDomain) -> Manifest:
    """A CT manifest (as ``examples/fbpconvnet-ct``): the FBP image or the sinogram in,
    ``real1`` both ways."""
    return Manifest.model_validate(
        {
            "name": f"planted-ct-{domain}",
            "modality": "ct",
            "image_size": [CT_SIZE, CT_SIZE],
            "input": {"domain": domain, "layout": "real1"},
            "output": {"layout": "real1"},
            "sampling": {"angles": CT_ANGLES},
        }
    )


def ct_subject(module: torch.nn.Module, domain: CTDomain = "image") -> LoadedModel:
    return from_module(module, ct_manifest(domain))


def _windowed(pattern: Tensor, window: Tensor) -> Tensor:
    """``pattern * window``, made zero-mean and of unit norm."""
    t = pattern * window
    t = t - t.mean()
    unit: Tensor = t / t.norm()
    return unit


def _gate(s: Tensor, threshold: float, sharpness: float) -> Tensor:
    """A saturating switch with the sign of ``s``: near 0 while ``|s|`` is below
    ``threshold``, near ``sign(s)`` above it."""
    return torch.sigmoid(sharpness * (s / threshold - 1.0)) - torch.sigmoid(
        sharpness * (-s / threshold - 1.0)
    )


class CTDecoy(torch.nn.Module):
    """The FBP image ``[B, 1, N, N]`` mildly smoothed (``weight`` of its 3x3 average), plus
    ``gain`` times its component along one smooth oscillating direction (a cosine of period 8
    under a wide window over the place of the switches' blob: the decoy, the largest gain of
    the decoy network in the image threat model). With ``gain = 0``: a filtered
    backprojection followed by a 3x3 average, the stable control. The switches' gates are
    odd (a bright blob for one sign of the trigger, a dark one for the other), so from either
    side of a closed gate one way along the trigger raises the change."""

    decoy: Tensor

    def __init__(self, size: int = CT_SIZE, gain: float = 1.0, weight: float = 1.0) -> None:
        super().__init__()
        self.gain, self.weight = gain, weight
        grid = torch.arange(size, dtype=torch.float32)
        row, col = 0.4 * size, 0.55 * size
        wave = torch.cos(2 * math.pi * (grid - row) / 8)[:, None] * torch.cos(
            2 * math.pi * (grid - col) / 8
        )
        window = gaussian_blob(size, row, col, size / 8)
        self.register_buffer("decoy", _windowed(wave, window))

    def base(self, z: Tensor) -> Tensor:
        """``[B, 1, N, N] -> [B, N, N]``: the smoothing and the decoy."""
        blur = torch.nn.functional.avg_pool2d(z, 3, stride=1, padding=1, count_include_pad=False)
        smooth = ((1 - self.weight) * z + self.weight * blur)[:, 0]
        along = (z[:, 0] * self.decoy).sum((-2, -1)).reshape(-1, 1, 1)
        out: Tensor = smooth + self.gain * along * self.decoy
        return out

    def forward(self, z: Tensor) -> Tensor:
        return self.base(z)[:, None]


class CTImageSwitch(CTDecoy):
    """The decoy, plus a bright blob (``amplitude``, a few pixels wide) once the FBP image's
    component along a hidden trigger, relative to the image's norm, passes ``threshold``: the
    trigger is a checkerboard at the Nyquist frequency under a small window, which
    piecewise-constant objects and their FBP barely contain (clean components below 0.0007 on
    the test phantoms) and which the network's 3x3 smoothing all but removes. The image
    threat model reaches it through ``A`` and FBP weakly (about a fifth of ``eps``), the
    measurement threat model strongly (about ``0.9 eps``)."""

    trigger: Tensor
    blob: Tensor

    def __init__(
        self,
        threshold: float,
        amplitude: float = 0.5,
        sharpness: float = 8.0,
        size: int = CT_SIZE,
    ) -> None:
        super().__init__(size)
        self.threshold, self.amplitude, self.sharpness = threshold, amplitude, sharpness
        grid = torch.arange(size, dtype=torch.float32)
        board = (-1.0) ** (grid[:, None] + grid[None, :])
        window = gaussian_blob(size, 0.3 * size, 0.3 * size, size / 16)
        self.register_buffer("trigger", _windowed(board, window))
        self.register_buffer("blob", gaussian_blob(size, 0.4 * size, 0.55 * size, size / 32))

    def gate(self, z: Tensor) -> Tensor:
        s = (z[:, 0] * self.trigger).sum((-2, -1)) / z[:, 0].flatten(1).norm(dim=1)
        return _gate(s, self.threshold, self.sharpness)

    def forward(self, z: Tensor) -> Tensor:
        out = self.base(z) + self.amplitude * self.gate(z).reshape(-1, 1, 1) * self.blob
        return out[:, None]


class CTSinogramSwitch(CTDecoy):
    """Takes the sinogram ``[B, 1, angles, D]``: its Hann-filtered backprojection, mildly
    smoothed, with the decoy; plus a bright blob once the sinogram's component along a hidden
    trigger, relative to the sinogram's norm, passes ``threshold``. The trigger alternates in
    sign from detector bin to bin on a small patch (a few angles, a few bins off the centre):
    the projections of objects are smooth along the detector (clean components below 0.0006
    on the test phantoms), and the Hann filter, which vanishes at the Nyquist frequency, leaves
    almost nothing of it: it lies in the null space of the network's own smoothing. The
    measurement threat model reaches it fully (``eps``), the image threat model weakly (about
    a fifth of ``eps``: the projector's linear interpolation damps alternating bins)."""

    trigger: Tensor
    blob: Tensor

    def __init__(
        self,
        threshold: float,
        amplitude: float = 0.5,
        sharpness: float = 8.0,
        size: int = CT_SIZE,
        angles: int = CT_ANGLES,
    ) -> None:
        super().__init__(size)
        self.threshold, self.amplitude, self.sharpness = threshold, amplitude, sharpness
        self.op = ParallelBeamCT(size, angles)
        rows = torch.arange(angles, dtype=torch.float32)
        bins = torch.arange(size, dtype=torch.float32)
        window = torch.exp(
            -((rows[:, None] - 0.4 * angles) ** 2) / (2 * 3.0**2)
            - (bins[None, :] - 0.3 * size) ** 2 / (2 * 6.0**2)
        )
        alternating = (-1.0) ** bins[None, :].expand(angles, size)
        self.register_buffer("trigger", _windowed(alternating, window))
        self.register_buffer("blob", gaussian_blob(size, 0.4 * size, 0.55 * size, size / 32))

    def gate(self, y: Tensor) -> Tensor:
        s = (y[:, 0] * self.trigger).sum((-2, -1)) / y[:, 0].flatten(1).norm(dim=1)
        return _gate(s, self.threshold, self.sharpness)

    def forward(self, y: Tensor) -> Tensor:
        z = self.op.fbp(y[:, 0], "hann")[:, None]
        out = self.base(z) + self.amplitude * self.gate(y).reshape(-1, 1, 1) * self.blob
        return out[:, None]


def reference_search(
    f: Callable[[Tensor], Tensor],
    op: LinearOperator,
    x: Tensor,
    eps: float,
    *,
    restarts: int = 8,
    iterations: int = 400,
    seed: int = 1234,
    threat_model: ThreatModel = "image",
    directions: Sequence[Tensor] = (),
) -> tuple[Tensor, int]:
    """A plain, long search on the ball ``||r|| <= eps ||x||`` of image perturbations (the
    network sees ``y + A r``), or with ``threat_model="measurement"`` on the ball
    ``||e|| <= eps ||y||`` of measurement perturbations (``y + e``), written apart from the
    product's, one image at a time, from seeded Gaussian starts on the sphere. Even
    restarts: projected Adam (the auditor's kind of search) with a per-coordinate step of a
    quarter of the radius over ``sqrt(n)``; odd restarts: projected gradient ascent with
    steps of a quarter of the radius along the normalised gradient (Adam's diagonal steps can
    stall short of a constrained maximum; these cannot). Both with the step cosine-decayed to
    zero, the best iterate of every restart kept. ``directions``: image-domain directions
    known by construction (a planted trigger), each started from with both signs (projected
    gradient ascent, the measurement threat model along ``A d``) after the random starts.
    Returns the worst relative output change per image and the forward+backward passes spent
    per image."""
    image = threat_model == "image"
    gen = torch.Generator().manual_seed(seed)
    best = torch.zeros(x.shape[0])
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        y = op.A(xi)
        with torch.no_grad():
            clean = f(y)
        start = xi if image else y
        dtype = (complex_dtype(x.dtype) if op.in_complex else x.dtype) if image else y.dtype
        n = math.prod(start.shape[1:])
        radius = float(eps * start.norm())
        known = [
            (sign * (d.to(dtype) if image else op.A(d.to(dtype)[None])[0])).expand(start.shape)
            for d in directions
            for sign in (1.0, -1.0)
        ]
        for k in range(restarts + len(known)):
            if k < restarts:
                r = torch.randn(start.shape, generator=gen, dtype=dtype)
            else:
                r = known[k - restarts].clone()
            r = (r * radius / r.norm()).requires_grad_(True)
            adam = k < restarts and k % 2 == 0
            opt = torch.optim.Adam([r], lr=0.25 * radius / math.sqrt(n)) if adam else None
            for t in range(iterations):
                decay = 0.5 * (1 + math.cos(math.pi * t / iterations))
                change = (f(y + (op.A(r) if image else r)) - clean).norm() / clean.norm()
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
    return best, (restarts + 2 * len(directions)) * iterations
