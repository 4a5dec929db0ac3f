"""Cartesian MRI forward models: single-coil and multi-coil (SENSE) sampled Fourier transforms.

Conventions (shared with manifests and uploaded masks):

* The 2-D DFT is orthonormal (``norm="ortho"``) and *centred*: image and k-space both have their
  origin at index ``(H // 2, W // 2)``, i.e. ``F_c = fftshift o fft2 o ifftshift``.
* A mask is a boolean ``[H, W]`` array in the centred k-space layout (DC at ``(H//2, W//2)``).
* Measurements are the sampled k-space values as a vector ``[B, M]`` (multi-coil ``[B, C, M]``),
  ordered as ``mask.nonzero()`` in row-major order. ``to_grid``/``from_grid`` convert between this
  vector and a zero-filled centred k-space grid ``[B, H, W]`` (``[B, C, H, W]``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction.operators.base import (
    LinearOperator,
    OperatorShapeError,
    complex_dtype,
    in_cpu_chunks,
)

__all__ = [
    "MultiCoilMRI",
    "SingleCoilMRI",
    "birdcage_sensitivities",
    "normalize_sensitivities",
]


def _as_mask(mask: Any) -> Tensor:
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).cpu()
    if m.ndim != 2:
        raise OperatorShapeError(f"a sampling mask must be 2-D [H, W], got shape {list(m.shape)}")
    if m.dtype != torch.bool:
        if not bool(torch.all((m == 0) | (m == 1))):
            raise OperatorShapeError("a sampling mask must be boolean (or hold only 0 and 1)")
        m = m.bool()
    if not bool(m.any()):
        raise OperatorShapeError("the sampling mask selects no k-space sample")
    return m


class _CartesianSampling:
    """Index bookkeeping shared by the single- and multi-coil operators."""

    def __init__(self, mask: Any) -> None:
        self.mask = _as_mask(mask)
        h, w = self.mask.shape
        rows, cols = torch.nonzero(self.mask, as_tuple=True)
        #: flat indices into the centred grid, in measurement order
        self.centred_index = rows * w + cols
        #: the same samples as flat indices into the *uncentred* output of fft2
        ku, kv = (rows - h // 2) % h, (cols - w // 2) % w
        self.fft_index = ku * w + kv
        #: ``fft2(ifftshift(x))[k] = fft2(x)[k] * phase[k]`` (shift theorem): the image-side
        #: shift becomes a phase on the sampled entries, so no array is ever rolled
        angle = 2 * math.pi * (ku.double() * (h // 2) / h + kv.double() * (w // 2) / w)
        self.phase = torch.polar(torch.ones_like(angle), angle)
        self.shape = (h, w)
        self.count = int(rows.numel())


class _CartesianMRI(LinearOperator):
    dagger_is_exact = False

    def __init__(self, mask: Any, out_shape: tuple[int, ...]) -> None:
        self.sampling = _CartesianSampling(mask)
        super().__init__(self.sampling.shape, out_shape, in_complex=True, out_complex=True)

    @property
    def mask(self) -> Tensor:
        """The boolean sampling mask ``[H, W]`` (centred layout), on the CPU."""
        return self.sampling.mask

    @property
    def ratio(self) -> float:
        """Fraction of k-space sampled."""
        return self.sampling.count / self.sampling.mask.numel()

    def _index(self, name: str, device: torch.device) -> Tensor:
        return self._buffer(name, getattr(self.sampling, name), device)

    def _phase(self, like: Tensor) -> Tensor:
        return self._buffer("phase", self.sampling.phase, like.device, like.dtype)

    def _sample(self, image: Tensor) -> Tensor:
        """Centred orthonormal DFT of ``[..., H, W]`` images, then the sampled entries."""
        k: Tensor = torch.fft.fft2(image, norm="ortho").flatten(-2)
        return k.index_select(-1, self._index("fft_index", image.device)) * self._phase(k)

    def _unsample(self, y: Tensor) -> Tensor:
        """Adjoint of ``_sample``: zero-fill ``[..., M]`` and apply the inverse centred DFT."""
        h, w = self.sampling.shape
        index = self._index("fft_index", y.device).expand(y.shape)
        grid = y.new_zeros((*y.shape[:-1], h * w)).scatter(-1, index, y * self._phase(y).conj())
        image: Tensor = torch.fft.ifft2(grid.unflatten(-1, (h, w)), norm="ortho")
        return image

    def to_grid(self, y: Tensor) -> Tensor:
        """Measurement vectors ``[..., M]`` -> zero-filled centred k-space ``[..., H, W]``."""
        h, w = self.sampling.shape
        if y.shape[-1] != self.sampling.count:
            raise OperatorShapeError(
                f"expected {self.sampling.count} samples in the last axis, got {y.shape[-1]}"
            )
        index = self._index("centred_index", y.device).expand(y.shape)
        grid: Tensor = y.new_zeros((*y.shape[:-1], h * w)).scatter(-1, index, y)
        return grid.view(*y.shape[:-1], h, w)

    def from_grid(self, k: Tensor) -> Tensor:
        """Centred k-space grid ``[..., H, W]`` -> the sampled entries ``[..., M]``."""
        if tuple(k.shape[-2:]) != self.sampling.shape:
            raise OperatorShapeError(
                f"expected a k-space grid ending in {list(self.sampling.shape)}, "
                f"got {list(k.shape)}"
            )
        return k.flatten(-2).index_select(-1, self._index("centred_index", k.device))


class SingleCoilMRI(_CartesianMRI):
    """``A x = (F_c x)[mask]``: the sampled entries of the centred orthonormal 2-D DFT.

    The rows of ``A`` are orthonormal (``A A^H = I``), so ``A_dagger = A_adjoint`` is the exact
    pseudo-inverse: the zero-filled reconstruction.

    >>> import torch
    >>> mask = torch.zeros(8, 8, dtype=torch.bool); mask[:, ::2] = True
    >>> op = SingleCoilMRI(mask)
    >>> y = op.A(torch.rand(2, 8, 8))
    >>> y.shape, y.dtype
    (torch.Size([2, 32]), torch.complex64)
    >>> bool(torch.allclose(op.A(op.A_adjoint(y)), y, atol=1e-6))
    True
    """

    dagger_is_exact = True
    dagger_is_direct = True

    def __init__(self, mask: Any) -> None:
        m = _as_mask(mask)
        super().__init__(m, (int(m.sum()),))

    def _forward(self, x: Tensor) -> Tensor:
        return self._sample(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._unsample(y)

    def _dagger(self, y: Tensor) -> Tensor:
        return self._unsample(y)

    def norm(self, **_: Any) -> float:
        """Exactly 1: the rows of ``A`` are orthonormal."""
        return 1.0

    def norm_bound(self) -> float:
        return 1.0


def birdcage_sensitivities(
    coils: int, shape: tuple[int, int], *, coil_radius: float = 1.5, dtype: Any = np.complex64
) -> np.ndarray:
    """Simulated coil sensitivity maps ``[C, H, W]`` of a birdcage-style array.

    ``coils`` coils sit evenly on a circle of radius ``coil_radius`` (in units of the image
    half-width) around the image centre. Each map falls off as the inverse distance to its coil
    and carries a smoothly varying phase (the angle seen from the coil plus the coil's position
    angle). The maps are normalised so that ``sum_c |S_c|^2 = 1`` at every pixel.
    """
    if coils < 1:
        raise ValueError(f"coils must be >= 1, got {coils}")
    h, w = shape
    yy, xx = np.meshgrid(
        (np.arange(h) - h // 2) / (h / 2), (np.arange(w) - w // 2) / (w / 2), indexing="ij"
    )
    angles = 2 * np.pi * np.arange(coils) / coils
    cy = coil_radius * np.sin(angles)[:, None, None]
    cx = coil_radius * np.cos(angles)[:, None, None]
    dy, dx = yy[None] - cy, xx[None] - cx
    distance = np.hypot(dy, dx)
    maps = np.exp(1j * (np.arctan2(dy, dx) + angles[:, None, None])) / distance
    return normalize_sensitivities(maps).astype(dtype)


def normalize_sensitivities(
    maps: Any, support: Any | None = None, *, threshold: float = 1e-6
) -> np.ndarray:
    """Scale coil maps ``[C, H, W]`` so that ``sum_c |S_c|^2 = 1`` on the object.

    The object is ``support`` when given, else every pixel whose root-sum-of-squares exceeds
    ``threshold`` times its maximum; maps are set to zero elsewhere.
    """
    s = np.asarray(maps)
    if s.ndim != 3:
        raise OperatorShapeError(f"coil maps must be [C, H, W], got shape {list(s.shape)}")
    if not np.all(np.isfinite(s)):
        raise OperatorShapeError("coil maps contain NaN or infinite values")
    rss = np.sqrt(np.sum(np.abs(s) ** 2, axis=0))
    inside = rss > threshold * rss.max() if support is None else np.asarray(support, dtype=bool)
    if inside.shape != rss.shape:
        raise OperatorShapeError(
            f"support shape {list(inside.shape)} does not match the maps {list(rss.shape)}"
        )
    inside = inside & (rss > 0)
    scale = np.where(inside, 1.0 / np.where(inside, rss, 1.0), 0.0)
    out: np.ndarray = s * scale[None]
    return out


class MultiCoilMRI(_CartesianMRI):
    """``A x = [(F_c (S_c x))[mask]]_c``: Cartesian SENSE with coil sensitivity maps ``S_c``.

    ``sensitivities`` is either an array ``[C, H, W]`` of maps (normalised with
    :func:`normalize_sensitivities` unless ``normalize=False``) or an ``int``: the number of
    coils of a simulated birdcage array (:func:`birdcage_sensitivities`). Measurements have shape
    ``[B, C, M]``. With normalised maps ``||A|| <= 1``.

    ``A_dagger`` has no closed form here: it is computed by conjugate gradients on the normal
    equations (CGLS from zero, so it converges to the minimum-norm least-squares solution),
    stopping at a relative normal-equation residual of ``dagger_tol`` or ``dagger_max_iter``
    iterations.
    """

    def __init__(
        self,
        mask: Any,
        sensitivities: Any,
        *,
        normalize: bool = True,
        dagger_tol: float = 1e-6,
        dagger_max_iter: int = 100,
    ) -> None:
        m = _as_mask(mask)
        shape = (int(m.shape[0]), int(m.shape[1]))
        if isinstance(sensitivities, int | np.integer):
            maps = birdcage_sensitivities(int(sensitivities), shape, dtype=np.complex128)
        else:
            raw = (
                sensitivities.cpu().numpy() if isinstance(sensitivities, Tensor) else sensitivities
            )
            maps = normalize_sensitivities(raw) if normalize else np.asarray(raw)
        if maps.ndim != 3 or maps.shape[1:] != shape:
            raise OperatorShapeError(
                f"coil maps must have shape [C, {shape[0]}, {shape[1]}] to match the mask, "
                f"got {list(maps.shape)}"
            )
        self.coils = int(maps.shape[0])
        self.sensitivities = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.complex128))
        self.dagger_tol = dagger_tol
        self.dagger_max_iter = dagger_max_iter
        super().__init__(m, (self.coils, int(m.sum())))
        self._work = self.coils * shape[0] * shape[1]

    def norm_bound(self) -> float:
        """``max_pixel sqrt(sum_c |S_c|^2)`` (1 for normalised maps): ``A^H A`` is at most the
        fully sampled ``sum_c S_c^H S_c``, a diagonal operator."""
        rss2 = torch.sum(torch.abs(self.sensitivities) ** 2, dim=0)
        return math.sqrt(float(rss2.max()))

    def _maps(self, like: Tensor) -> Tensor:
        return self._buffer("maps", self.sensitivities, like.device, complex_dtype(like.dtype))

    def _forward(self, x: Tensor) -> Tensor:
        return in_cpu_chunks(lambda c: self._sample(self._maps(c) * c.unsqueeze(1)), x, self._work)

    def _adjoint(self, y: Tensor) -> Tensor:
        return in_cpu_chunks(
            lambda c: torch.sum(self._maps(c).conj() * self._unsample(c), dim=1), y, self._work
        )
