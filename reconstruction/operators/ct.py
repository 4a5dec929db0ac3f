"""Parallel-beam CT: a discretised Radon transform with its exact adjoint and FBP.

Geometry (the conventions of ``skimage.transform.radon`` with ``circle=True``, so sinograms are
interchangeable up to the axis order):

* an image is ``[N, N]``, pixel ``(r, c)`` at offset ``(r - N//2, c - N//2)`` from the centre;
* a projection angle ``theta`` (radians, parallel beams over ``[0, pi)``) maps that pixel to the
  detector coordinate ``t = (c - N//2) cos(theta) - (r - N//2) sin(theta)``; detector bin ``d``
  sits at ``t = d - D//2``;
* a sinogram is ``[n_angles, D]`` (scikit-image stores the transpose).

``A`` is pixel-driven: every pixel spreads its value over the two nearest detector bins with
linear-interpolation weights, for each angle. The weights form a sparse matrix, built once per
geometry (cached) and applied as a CSR matrix product; ``A_adjoint`` uses the exact transpose,
which is the linear-interpolation backprojector of filtered backprojection (FBP also
backprojects the filtered signal one bin beyond each end of the detector, where the ramp filter
leaves it non-zero). Images should vanish
outside the inscribed circle when ``D = N`` (the default), as for scikit-image.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from reconstruction.operators.base import LinearOperator, OperatorShapeError

__all__ = ["ParallelBeamCT", "fbp_filter"]

FilterName = Literal["ram-lak", "hann"]


def _angles_array(angles: Any) -> np.ndarray:
    if isinstance(angles, int | np.integer):
        if angles < 1:
            raise OperatorShapeError(f"the number of angles must be >= 1, got {angles}")
        return np.arange(int(angles)) * (np.pi / int(angles))
    a = np.asarray(angles.cpu().numpy() if isinstance(angles, Tensor) else angles, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise OperatorShapeError("angles must be a count or a non-empty 1-D array of radians")
    if not np.all(np.isfinite(a)):
        raise OperatorShapeError("angles must be finite")
    return a


def _system_matrices(
    n: int, angles: tuple[float, ...], detectors: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(A_ext, A_ext^T)`` as float64 SciPy CSR matrices with int32 indices, for one geometry.

    ``A_ext`` projects onto ``detectors + 2`` bins per angle: one virtual bin beyond each end
    of the detector. ``A`` drops the two virtual bins; filtered backprojection uses them,
    because the ramp-filtered sinogram is not zero there.
    """
    theta = np.asarray(angles)
    bins_ext = detectors + 2
    rr, cc = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    # [pixels, angles]: extended-bin position of every pixel centre at every angle
    t = cc.reshape(-1, 1) * np.cos(theta) - rr.reshape(-1, 1) * np.sin(theta) + detectors // 2 + 1
    lower = np.floor(t)
    upper_weight = t - lower
    lower_bin = lower.astype(np.int64)
    # [pixels, angles, 2]: each pixel touches two bins per angle (rows of A^T in CSR order)
    bins = np.stack([lower_bin, lower_bin + 1], axis=-1)
    weights = np.stack([1.0 - upper_weight, upper_weight], axis=-1)
    inside = (bins >= 0) & (bins < bins_ext) & (weights > 0)
    columns = bins + (np.arange(theta.size) * bins_ext)[None, :, None]
    counts = inside.reshape(n * n, -1).sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    at = sp.csr_matrix(
        (weights[inside], columns[inside].astype(np.int32), indptr.astype(np.int32)),
        shape=(n * n, theta.size * bins_ext),
    )
    a = at.T.tocsr()
    a.sort_indices()
    return a, at


@functools.lru_cache(maxsize=8)
def _torch_matrices(
    n: int, angles: tuple[float, ...], detectors: int, device: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(A_ext, A_ext^T)`` as torch CSR tensors, cached per geometry, device and dtype; the
    float64 SciPy matrices they come from are not kept (at 256x256 and 180 angles they would
    hold another 0.6 GB)."""
    a, at = _system_matrices(n, angles, detectors)
    return _to_torch_csr(a, torch.device(device), dtype), _to_torch_csr(
        at, torch.device(device), dtype
    )


def _to_torch_csr(m: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int32)),
            torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data),
            size=m.shape,
            dtype=dtype,
            check_invariants=False,
        ).to(device)


class _CSRProduct(torch.autograd.Function):
    """``x -> (M x^T)^T`` for a batch ``x [B, n]``; the backward applies ``M^T``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mat: Tensor, mat_t: Tensor) -> Tensor:
        ctx.mats = (mat, mat_t)
        return torch.mm(mat, x.t().contiguous()).t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        mat, mat_t = ctx.mats
        return _CSRProduct.apply(grad, mat_t, mat), None, None


def fbp_filter(size: int, name: FilterName = "ram-lak") -> np.ndarray:
    """Frequency response (length ``size // 2 + 1``, for ``rfft``) of an FBP filter.

    The ramp is built from its band-limited spatial kernel (Kak & Slaney, eq. 3.61:
    ``h[0] = 1/4``, ``h[n] = -1/(pi n)^2`` for odd ``n``, 0 for even ``n``), which avoids the DC
    offset of a sampled ``|omega|``. ``"hann"`` multiplies it by a Hann window that vanishes at
    the Nyquist frequency. The factor 2 pairs with the ``dtheta / 2`` angular weights of
    :meth:`ParallelBeamCT.fbp`.
    """
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (np.pi * n) ** 2
    response = 2.0 * np.real(np.fft.rfft(kernel))
    if name == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * np.fft.rfftfreq(size)))
    elif name != "ram-lak":
        raise ValueError(f"unknown FBP filter {name!r}: use 'ram-lak' or 'hann'")
    return response


def _angular_weights(theta: np.ndarray) -> np.ndarray:
    """``dtheta_k / 2`` per angle: half the mean of the gaps to its neighbours on ``[0, pi)``."""
    if theta.size == 1:
        return np.array([np.pi / 2])
    folded = np.mod(theta, np.pi)
    order = np.argsort(folded)
    s = folded[order]
    gaps = np.diff(np.concatenate([s, [s[0] + np.pi]]))
    per_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    weights = np.empty_like(per_sorted)
    weights[order] = per_sorted
    return weights / 2.0


class ParallelBeamCT(LinearOperator):
    """Parallel-beam Radon transform of ``[B, N, N]`` images to ``[B, n_angles, D]`` sinograms.

    ``angles`` is a count (equispaced on ``[0, pi)``) or an array of angles in radians;
    ``detectors`` defaults to ``N``. ``A_dagger`` is filtered backprojection with ``filter``
    (``"ram-lak"``, or ``"hann"``): an *approximate* inverse, not the exact pseudo-inverse,
    exact only in the continuous limit of many angles.

    >>> import torch
    >>> op = ParallelBeamCT(32, angles=16)
    >>> op.A(torch.rand(3, 32, 32)).shape
    torch.Size([3, 16, 32])
    """

    dagger_is_exact = False
    dagger_is_direct = True

    def __init__(
        self,
        image_size: int | tuple[int, int],
        angles: Any,
        detectors: int | None = None,
        *,
        filter: FilterName = "ram-lak",
    ) -> None:
        if isinstance(image_size, tuple | list):
            if len(image_size) != 2 or image_size[0] != image_size[1]:
                raise OperatorShapeError(f"CT images must be square, got {list(image_size)}")
            image_size = int(image_size[0])
        if image_size < 2:
            raise OperatorShapeError(f"image_size must be >= 2, got {image_size}")
        self.image_size = int(image_size)
        self.angles = _angles_array(angles)
        self.detectors = int(detectors) if detectors is not None else self.image_size
        if self.detectors < 1:
            raise OperatorShapeError(f"detectors must be >= 1, got {self.detectors}")
        fbp_filter(8, filter)  # validates the name early
        self.filter: FilterName = filter
        self._padded = max(64, 2 ** math.ceil(math.log2(2 * self.detectors)))
        self._angle_weights = torch.from_numpy(_angular_weights(self.angles))
        self._angles_key = tuple(self.angles.tolist())
        super().__init__(
            (self.image_size, self.image_size),
            (self.angles.size, self.detectors),
            in_complex=False,
            out_complex=False,
        )

    def _matrices(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return _torch_matrices(
            self.image_size, self._angles_key, self.detectors, str(like.device), like.dtype
        )

    def _forward(self, x: Tensor) -> Tensor:
        a, at = self._matrices(x)
        y: Tensor = _CSRProduct.apply(x.reshape(x.shape[0], -1), a, at)
        return y.reshape(x.shape[0], self.angles.size, self.detectors + 2)[..., 1:-1]

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._backproject(torch.nn.functional.pad(y, (1, 1)))

    def _backproject(self, y_ext: Tensor) -> Tensor:
        """Adjoint of the extended projector, for sinograms ``[B, n_angles, D + 2]``."""
        a, at = self._matrices(y_ext)
        x: Tensor = _CSRProduct.apply(y_ext.reshape(y_ext.shape[0], -1), at, a)
        return x.reshape(y_ext.shape[0], *self.in_shape)

    def _dagger(self, y: Tensor) -> Tensor:
        return self._fbp(y, self.filter)

    def fbp(self, y: Tensor, filter: FilterName | None = None) -> Tensor:
        """Filtered backprojection of sinograms ``[B, n_angles, D]`` (approximate inverse)."""
        y = self._check(y, self.out_shape, False, "fbp", "sinogram")
        return self._fbp(y, filter or self.filter)

    def _fbp(self, y: Tensor, filter: FilterName) -> Tensor:
        response = self._buffer(
            f"filter-{filter}",
            torch.from_numpy(fbp_filter(self._padded, filter)),
            y.device,
            y.dtype,
        )
        spectrum = torch.fft.rfft(y, n=self._padded, dim=-1) * response
        filtered = torch.fft.irfft(spectrum, n=self._padded, dim=-1)
        # bins -1 .. D of the (linear) filtered sinogram; bin -1 wraps to the end of the padding
        extended = torch.cat([filtered[..., -1:], filtered[..., : self.detectors + 1]], dim=-1)
        weights = self._buffer("angle_weights", self._angle_weights, y.device, y.dtype)
        return self._backproject(extended * weights[:, None])
