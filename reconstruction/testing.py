"""Numerical checks for operators, shared by the test suite and ``recon-audit selfcheck``.

The adjoint check is scale-aware (as ODL's ``OperatorTest``):
``|<A x, y> - <x, A^H y>| / (||A|| ||x|| ||y||)``, which does not depend on how the operator or
the test vectors are scaled, so one tolerance serves every operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from reconstruction.operators.base import complex_dtype
from reconstruction.sampling import cartesian_lines, variable_density

__all__ = [
    "OperatorReport",
    "adjoint_error",
    "check_operator",
    "example_operators",
    "linearity_error",
    "random_element",
]


def random_element(
    op: LinearOperator,
    space: str,
    *,
    batch: int = 2,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """A Gaussian random batch in the operator's image (``"in"``) or measurement (``"out"``)
    space, complex where that space is complex, in the precision of ``dtype``."""
    shape = op.in_shape if space == "in" else op.out_shape
    is_complex = op.in_complex if space == "in" else op.out_complex
    t = complex_dtype(dtype) if is_complex else dtype
    return torch.randn((batch, *shape), generator=generator, dtype=t, device=device)


def _inner(a: Tensor, b: Tensor) -> complex:
    return complex(torch.sum(a.conj() * b).item())


def adjoint_error(
    op: LinearOperator, *, seed: int = 0, batch: int = 2, device: torch.device | str = "cpu"
) -> float:
    """Scale-aware dot-product test in float64 (complex128 where complex)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = random_element(op, "in", batch=batch, generator=gen, device=device)
    y = random_element(op, "out", batch=batch, generator=gen, device=device)
    lhs = _inner(op.A(x), y)
    rhs = _inner(x, op.A_adjoint(y))
    scale = (
        op.norm(device=device)
        * float(torch.linalg.vector_norm(x))
        * float(torch.linalg.vector_norm(y))
    )
    return abs(lhs - rhs) / scale


def linearity_error(
    op: LinearOperator, *, seed: int = 0, batch: int = 2, device: torch.device | str = "cpu"
) -> float:
    """``||A(a x + b z) - a A x - b A z|| / (||A|| (|a| ||x|| + |b| ||z||))`` in float64."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = random_element(op, "in", batch=batch, generator=gen, device=device)
    z = random_element(op, "in", batch=batch, generator=gen, device=device)
    a, b = (complex(1.5, -0.5), complex(-0.25, 2.0)) if op.in_complex else (1.5, -0.25)
    diff = op.A(a * x + b * z) - a * op.A(x) - b * op.A(z)
    denom = op.norm(device=device) * (
        abs(a) * float(torch.linalg.vector_norm(x)) + abs(b) * float(torch.linalg.vector_norm(z))
    )
    return float(torch.linalg.vector_norm(diff)) / denom


@dataclass(frozen=True)
class OperatorReport:
    name: str
    device: str
    norm: float
    adjoint_error: float
    linearity_error: float
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_operator(
    name: str, op: LinearOperator, *, device: torch.device | str = "cpu", tol: float = 1e-5
) -> OperatorReport:
    """Adjointness and linearity of one operator on one device, against ``tol``."""
    adj = adjoint_error(op, device=device)
    lin = linearity_error(op, device=device)
    return OperatorReport(
        name=name,
        device=str(device),
        norm=op.norm(device=device),
        adjoint_error=adj,
        linearity_error=lin,
        passed=bool(adj < tol and lin < tol),
    )


def example_operators(size: int = 64, seed: int = 0) -> dict[str, Callable[[], LinearOperator]]:
    """Factories of one small representative of every operator class (the test registry)."""
    vd = variable_density((size, size), 0.3, seed)
    lines = cartesian_lines((size, size), 0.3, seed)
    return {
        "single-coil-mri": lambda: SingleCoilMRI(vd),
        "single-coil-mri-lines": lambda: SingleCoilMRI(lines),
        "multi-coil-mri": lambda: MultiCoilMRI(lines, 4),
        "multi-coil-mri-rect": lambda: MultiCoilMRI(
            variable_density((size, size + 8), 0.4, seed), 3
        ),
        "parallel-beam-ct": lambda: ParallelBeamCT(size, 24),
        "parallel-beam-ct-subset": lambda: ParallelBeamCT(
            size, np.sort(np.random.default_rng(seed).uniform(0, np.pi, 17)), size + 5
        ),
    }
