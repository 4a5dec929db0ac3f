"""One property suite over every operator (the registry of ``reconstruction.testing``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from reconstruction.operators import LinearOperator, OperatorShapeError, ParallelBeamCT
from reconstruction.testing import (
    adjoint_error,
    example_operators,
    linearity_error,
    random_element,
)

REGISTRY: dict[str, Callable[[], LinearOperator]] = example_operators(size=32)


@pytest.fixture(params=sorted(REGISTRY))
def op(request: pytest.FixtureRequest) -> LinearOperator:
    return REGISTRY[request.param]()


def test_linearity(op: LinearOperator, device: str) -> None:
    assert linearity_error(op, device=device) < 1e-5


def test_adjointness_scale_aware(op: LinearOperator, device: str) -> None:
    for seed in range(3):
        assert adjoint_error(op, seed=seed, device=device) < 1e-5


def test_adjoint_operator_is_cached_and_involutive(
    op: LinearOperator, rng: torch.Generator
) -> None:
    assert op.H is op.H
    assert op.H.H is op
    y = random_element(op, "out", generator=rng)
    torch.testing.assert_close(op.H.A(y), op.A_adjoint(y))
    assert op.H.in_shape == op.out_shape
    assert op.H.out_shape == op.in_shape
    assert op.H.norm() == pytest.approx(op.norm())


def test_composition_adjoint_reverses_order(op: LinearOperator) -> None:
    normal = op.H @ op
    assert normal.in_shape == normal.out_shape == op.in_shape
    assert adjoint_error(normal) < 1e-5
    assert normal.norm() == pytest.approx(op.norm() ** 2, rel=1e-3)


def test_norm_matches_dense_singular_value(op: LinearOperator) -> None:
    n_in = 1
    for s in op.in_shape:
        n_in *= s
    dtype = torch.complex128 if op.in_complex else torch.float64
    eye = torch.eye(n_in, dtype=dtype).reshape(n_in, *op.in_shape)
    dense = op.A(eye).reshape(n_in, -1).T
    sigma_max = float(torch.linalg.matrix_norm(dense, ord=2))
    assert op.norm() == pytest.approx(sigma_max, rel=1e-3)
    assert op.norm() <= sigma_max * (1 + 1e-9)


@pytest.mark.parametrize(
    "name", sorted(n for n in REGISTRY if not isinstance(REGISTRY[n](), ParallelBeamCT))
)
def test_dagger_on_range(name: str, rng: torch.Generator) -> None:
    """For ``r`` in the range of ``A^H``: ``A_dagger(A r)`` reproduces the data ``A r`` and
    recovers ``r``; exactly for exact pseudo-inverses, to CGLS accuracy otherwise (the
    multi-coil operators here are nearly rank-deficient, condition numbers above 1e8, so the
    image converges slowly along the weakest singular directions). CT's filtered
    backprojection is an approximate inverse with its own tests (test_ct.py)."""
    op = REGISTRY[name]()
    r = op.A_adjoint(random_element(op, "out", generator=rng))
    y = op.A(r)
    recovered = op.A_dagger(y)
    data_rel = torch.linalg.vector_norm(op.A(recovered) - y) / torch.linalg.vector_norm(y)
    image_rel = torch.linalg.vector_norm(recovered - r) / torch.linalg.vector_norm(r)
    assert float(data_rel) < (1e-12 if op.dagger_is_exact else 1e-4)
    assert float(image_rel) < (1e-10 if op.dagger_is_exact else 5e-3)


def test_batch_equals_loop(op: LinearOperator, rng: torch.Generator, device: str) -> None:
    x = random_element(op, "in", batch=3, generator=rng).to(device)
    y = random_element(op, "out", batch=3, generator=rng).to(device)
    batched_a, batched_h = op.A(x), op.A_adjoint(y)
    for i in range(3):
        torch.testing.assert_close(batched_a[i : i + 1], op.A(x[i : i + 1]))
        torch.testing.assert_close(batched_h[i : i + 1], op.A_adjoint(y[i : i + 1]))


def test_float32_agrees_with_float64(op: LinearOperator, rng: torch.Generator, device: str) -> None:
    x64 = random_element(op, "in", generator=rng).to(device)
    y64, y32 = op.A(x64), op.A(x64.to(torch.complex64 if x64.is_complex() else torch.float32))
    assert y32.dtype == (torch.complex64 if op.out_complex else torch.float32)
    assert y64.dtype == (torch.complex128 if op.out_complex else torch.float64)
    rel = torch.linalg.vector_norm(y32.to(y64.dtype) - y64) / torch.linalg.vector_norm(y64)
    assert float(rel) < 1e-5


def test_real_images_are_promoted_for_complex_operators(op: LinearOperator) -> None:
    x = torch.rand(2, *op.in_shape)
    y = op.A(x)
    if op.in_complex:
        torch.testing.assert_close(y, op.A(x.to(torch.complex64)))
    else:
        with pytest.raises(OperatorShapeError, match="real"):
            op.A(x.to(torch.complex64))


def test_gradient_of_inner_product_is_adjoint(op: LinearOperator, rng: torch.Generator) -> None:
    x = random_element(op, "in", generator=rng).requires_grad_(True)
    y = random_element(op, "out", generator=rng)
    loss = torch.sum((op.A(x).conj() * y).real)
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, op.A_adjoint(y))


def test_second_order_gradients_flow(op: LinearOperator, rng: torch.Generator) -> None:
    """Double backward works (needed for attacks through unrolled solvers)."""
    x = random_element(op, "in", generator=rng).requires_grad_(True)
    loss = torch.sum(torch.abs(op.A(x)) ** 2) / 2
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad(torch.sum(torch.abs(grad) ** 2) / 2, x)
    torch.testing.assert_close(hvp, op.A_adjoint(op.A(op.A_adjoint(op.A(x.detach())))))


@pytest.mark.parametrize("bad_shape", ["unbatched", "wrong_size"])
def test_shape_errors_name_the_expected_shape(op: LinearOperator, bad_shape: str) -> None:
    x = torch.rand(*op.in_shape) if bad_shape == "unbatched" else torch.rand(1, 5, 7)
    with pytest.raises(OperatorShapeError, match=r"expects a batch of images of shape \[B, "):
        op.A(x)
    with pytest.raises(OperatorShapeError, match="measurement"):
        op.A_adjoint(torch.rand(1, 3))


def test_integer_input_is_refused(op: LinearOperator) -> None:
    with pytest.raises(OperatorShapeError, match="floating-point"):
        op.A(torch.ones(1, *op.in_shape, dtype=torch.int64))
