"""The linear-operator interface every forward model of recon-audit implements.

An operator maps a batch of images ``x`` of shape ``[B, *in_shape]`` to a batch of
measurements ``y`` of shape ``[B, *out_shape]``. It offers

* ``A(x)``: the forward map,
* ``A_adjoint(y)``: the exact adjoint of the discretised ``A`` (tested with a dot-product test),
* ``A_dagger(y)``: a pseudo-inverse; exact where the operator says so
  (``dagger_is_exact``), otherwise a documented approximation (filtered backprojection for CT)
  or an iterative least-squares solve,
* ``H``: the adjoint operator, cached,
* ``norm()``: the operator norm by power iteration, cached,
* ``left @ right``: composition, whose adjoint is the reversed composition.

All maps are written in torch, accept CPU and CUDA tensors, float32/complex64 (float64 and
complex128 too: the output follows the input's precision) and are differentiable with autograd.
Buffers an operator needs (indices, coil maps, sparse matrices) are cached per device and dtype,
so one operator object serves inputs on any device.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "LinearOperator",
    "OperatorShapeError",
    "cgls",
    "in_cpu_chunks",
]


class OperatorShapeError(ValueError):
    """An input does not have the shape or dtype an operator expects."""


_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of the same precision (``complex64 -> float32``)."""
    return _REAL_OF.get(dtype, dtype)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of the same precision (``float32 -> complex64``)."""
    return _COMPLEX_OF.get(dtype, dtype)


class LinearOperator(abc.ABC):
    """Base class: subclasses implement ``_forward`` and ``_adjoint`` on checked inputs.

    ``in_complex``/``out_complex`` say whether the image and measurement spaces are complex.
    A real input given to a complex-domain operator is promoted to the complex dtype of the
    same precision; a complex input given to a real-domain operator is refused.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_complex: bool
    out_complex: bool
    #: True when ``A_dagger`` is the exact Moore-Penrose pseudo-inverse.
    dagger_is_exact: bool = False
    #: True when ``A_dagger`` is a direct (non-iterative, cheap) formula, e.g. FBP.
    dagger_is_direct: bool = False
    #: Stopping rule of the default iterative ``A_dagger`` (CGLS).
    dagger_tol: float = 1e-6
    dagger_max_iter: int = 100

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        *,
        in_complex: bool,
        out_complex: bool,
    ) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.in_complex = in_complex
        self.out_complex = out_complex
        self._norm: float | None = None
        self._buffers: dict[tuple[str, str, torch.dtype | None], Tensor] = {}

    # ----------------------------------------------------------------- public maps
    def A(self, x: Tensor) -> Tensor:
        """Forward map of a batch ``[B, *in_shape]``."""
        x = self._check(x, self.in_shape, self.in_complex, "A", "image")
        return self._forward(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Adjoint map of a batch ``[B, *out_shape]``."""
        y = self._check(y, self.out_shape, self.out_complex, "A_adjoint", "measurement")
        return self._adjoint(y)

    def A_dagger(self, y: Tensor) -> Tensor:
        """Pseudo-inverse. The default is the minimum-norm least-squares solution by CGLS."""
        y = self._check(y, self.out_shape, self.out_complex, "A_dagger", "measurement")
        return self._dagger(y)

    def __call__(self, x: Tensor) -> Tensor:
        return self.A(x)

    def _dagger(self, y: Tensor) -> Tensor:
        return cgls(
            self._forward,
            self._adjoint,
            y,
            self._zeros_in(y),
            max_iter=self.dagger_max_iter,
            tol=self.dagger_tol,
        )

    # ------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _forward(self, x: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _adjoint(self, y: Tensor) -> Tensor: ...

    # ------------------------------------------------------------------ derived
    @functools.cached_property
    def H(self) -> LinearOperator:
        """The adjoint operator (cached; ``op.H.H is op``)."""
        return AdjointOperator(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        return ComposedOperator(self, other)

    def norm(
        self,
        *,
        max_iter: int = 500,
        tol: float = 1e-9,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> float:
        """Operator norm ``||A||_2`` by power iteration on ``A^H A`` in float64 (cached).

        Power iteration approaches the norm from below; where the top singular values cluster
        (multi-coil MRI) the estimate is accurate to about 1e-3 relative. Algorithms that need
        an upper bound (step sizes) should add a safety margin.
        """
        if self._norm is None:
            gen = torch.Generator(device=device).manual_seed(seed)
            dtype = torch.complex128 if self.in_complex else torch.float64
            x = torch.randn((1, *self.in_shape), generator=gen, dtype=dtype, device=device)
            x = x / torch.linalg.vector_norm(x)
            estimate = 0.0
            for _ in range(max_iter):
                z = self.A_adjoint(self.A(x))
                new = math.sqrt(float(torch.linalg.vector_norm(z)))
                x = z / max(new**2, torch.finfo(torch.float64).tiny)
                if abs(new - estimate) <= tol * new:
                    estimate = new
                    break
                estimate = new
            self._norm = estimate
        return self._norm

    def norm_bound(self) -> float:
        """An upper bound of ``||A||`` for step sizes. The default is the power-iteration
        estimate with a 1 % margin; operators with a cheap rigorous bound override this."""
        return 1.01 * self.norm()

    def image_dtype(self, like: torch.dtype) -> torch.dtype:
        """The image-space dtype in the precision of ``like`` (complex where images are)."""
        precision = real_dtype(like)
        return complex_dtype(precision) if self.in_complex else precision

    # ------------------------------------------------------------------ helpers
    def _zeros_in(self, like: Tensor) -> Tensor:
        """Zeros in the image space, in the precision of ``like``."""
        dtype = self.image_dtype(like.dtype)
        return torch.zeros((like.shape[0], *self.in_shape), dtype=dtype, device=like.device)

    def _buffer(
        self, name: str, source: Tensor, device: torch.device, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``source`` moved to ``device``/``dtype``, cached so the copy happens once."""
        key = (name, str(device), dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = source.to(device=device, dtype=dtype or source.dtype)
            self._buffers[key] = buf
        return buf

    def _check(
        self, t: Tensor, shape: tuple[int, ...], is_complex: bool, method: str, what: str
    ) -> Tensor:
        name = type(self).__name__
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}.{method} expects a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape[1:]) != shape or t.ndim != len(shape) + 1:
            raise OperatorShapeError(
                f"{name}.{method} expects a batch of {what}s of shape [B, "
                f"{', '.join(map(str, shape))}], got {list(t.shape)}"
            )
        if t.is_complex():
            if not is_complex:
                raise OperatorShapeError(
                    f"{name}.{method} works on real {what}s, got dtype {t.dtype}"
                )
            return t
        if not t.is_floating_point():
            raise OperatorShapeError(
                f"{name}.{method} expects a floating-point or complex tensor, got {t.dtype}"
            )
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return t.to(complex_dtype(t.dtype)) if is_complex else t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape})"


class AdjointOperator(LinearOperator):
    """``A^H`` of another operator; its own adjoint is the original."""

    def __init__(self, parent: LinearOperator) -> None:
        super().__init__(
            parent.out_shape,
            parent.in_shape,
            in_complex=parent.out_complex,
            out_complex=parent.in_complex,
        )
        self.parent = parent

    @functools.cached_property
    def H(self) -> LinearOperator:
        return self.parent

    def _forward(self, x: Tensor) -> Tensor:
        return self.parent._adjoint(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.parent._forward(y)

    def norm(
        self,
        *,
        max_iter: int = 500,
        tol: float = 1e-9,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> float:
        """``||A^H|| = ||A||``."""
        return self.parent.norm(max_iter=max_iter, tol=tol, seed=seed, device=device)

    def norm_bound(self) -> float:
        return self.parent.norm_bound()

    def __repr__(self) -> str:
        return f"{self.parent!r}.H"


class ComposedOperator(LinearOperator):
    """``left @ right``: apply ``right`` first; the adjoint is ``right.H @ left.H``."""

    def __init__(self, left: LinearOperator, right: LinearOperator) -> None:
        if right.out_shape != left.in_shape or right.out_complex != left.in_complex:
            raise OperatorShapeError(
                f"cannot compose {left!r} @ {right!r}: {right.out_shape} "
                f"(complex={right.out_complex}) does not match {left.in_shape} "
                f"(complex={left.in_complex})"
            )
        super().__init__(
            right.in_shape,
            left.out_shape,
            in_complex=right.in_complex,
            out_complex=left.out_complex,
        )
        self.left = left
        self.right = right

    def _forward(self, x: Tensor) -> Tensor:
        return self.left._forward(self.right._forward(x))

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.right._adjoint(self.left._adjoint(y))

    def __repr__(self) -> str:
        return f"({self.left!r} @ {self.right!r})"


#: Elements processed at once on a CPU by operations whose intermediates grow with the batch
#: (coil images, wavelet bands): about 8 MiB in complex64. Larger batches are split because
#: their arrays fall out of cache: measured 2.8x slower per image for 8 images of 15 coils at
#: 256x256 (benchmarks/operator_throughput.py), 2x for the wavelet transform of 16 images.
#: GPUs take the whole batch.
CPU_CHUNK_ELEMENTS = 2**20


def in_cpu_chunks(fn: Callable[[Tensor], Tensor], t: Tensor, per_item: int) -> Tensor:
    """``fn(t)``, computed over sub-batches on the CPU so that about ``CPU_CHUNK_ELEMENTS``
    elements (``per_item`` per batch item) are in flight at once; ``fn`` must act per item."""
    size = max(1, CPU_CHUNK_ELEMENTS // max(per_item, 1))
    if t.device.type != "cpu" or t.shape[0] <= size:
        return fn(t)
    return torch.cat([fn(chunk) for chunk in t.split(size)])


def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of ``<a, b>`` per batch item (what CG needs for Hermitian systems)."""
    return torch.sum((a.conj() * b).real.reshape(a.shape[0], -1), dim=1)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def cgls(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    y: Tensor,
    x0: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> Tensor:
    """Conjugate gradients on the normal equations ``A^H A x = A^H y`` (CGLS), per batch item.

    Started from ``x0 = 0`` the iterates stay in the range of ``A^H``, so the limit is the
    minimum-norm least-squares solution, i.e. ``A^+ y``. Stops when every item's normal-equation
    residual has dropped below ``tol`` times its initial value, or after ``max_iter`` steps.
    """
    x = x0
    r = y - forward(x)
    s = adjoint(r)
    p = s
    gamma = _batched_dot(s, s)
    gamma0 = gamma.clamp_min(torch.finfo(gamma.dtype).tiny)
    tiny = torch.finfo(gamma.dtype).tiny
    for _ in range(max_iter):
        if bool(torch.all(gamma <= (tol**2) * gamma0)):
            break
        q = forward(p)
        alpha = gamma / _batched_dot(q, q).clamp_min(tiny)
        x = x + _expand(alpha, x) * p
        r = r - _expand(alpha, r) * q
        s = adjoint(r)
        gamma_new = _batched_dot(s, s)
        beta = gamma_new / gamma.clamp_min(tiny)
        p = s + _expand(beta, p) * p
        gamma = gamma_new
    return x
