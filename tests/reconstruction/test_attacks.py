"""The searches, on maps whose worst case is known in closed form."""

from __future__ import annotations

import torch

from reconstruction.attacks import budget_search, output_change, pnas_search, relative_norm
from reconstruction.data import shepp_logan
from reconstruction.operators import SingleCoilMRI
from reconstruction.sampling import variable_density

SIZE = 32


def _setup() -> tuple[SingleCoilMRI, torch.Tensor, torch.Tensor]:
    op = SingleCoilMRI(variable_density((SIZE, SIZE), 0.3, seed=0))
    x = torch.from_numpy(shepp_logan(SIZE)).float()[None].repeat(2, 1, 1)
    x[1] = x[1].flip(-1)
    return op, x, op.A(x)


def test_budget_search_reaches_the_linear_bound() -> None:
    """For f = A^H (zero-filling), ||f(y + A r) - f(y)|| = ||A^H A r|| <= ||r||, attained by r in
    the row space of A: the search must get close to eps ||x|| / ||A^H y||."""
    op, x, y = _setup()
    results = budget_search(
        op.A_adjoint,
        op,
        x,
        y,
        threat_model="image",
        eps=[0.01, 0.02],
        restarts=2,
        iterations=30,
        step_size=0.25,
        seed=0,
    )
    for result in results:
        bound = result.eps * relative_norm(x.to(torch.complex64), op.A_adjoint(y))
        assert torch.all(result.size <= result.eps * (1 + 1e-5))
        assert torch.all(result.change <= bound * (1 + 1e-4))
        assert torch.all(result.change >= 0.9 * bound)
        assert len(result.loss_curves) == 2
        assert len(result.restart_changes[0]) == 2


def test_measurement_threat_model_and_determinism() -> None:
    op, x, y = _setup()
    kwargs = {
        "threat_model": "measurement",
        "eps": [0.02],
        "restarts": 1,
        "iterations": 5,
        "step_size": 0.25,
        "seed": 3,
    }
    first = budget_search(op.A_adjoint, op, x, y, **kwargs)[0]  # type: ignore[arg-type]
    second = budget_search(op.A_adjoint, op, x, y, **kwargs)[0]  # type: ignore[arg-type]
    assert torch.equal(first.perturbation, second.perturbation)
    torch.testing.assert_close(first.measurement_size, torch.full((2,), 0.02), rtol=1e-4, atol=0)
    # A^H is an isometry on measurements (A A^H = I): the change is eps ||y|| / ||A^H y|| = eps
    torch.testing.assert_close(first.change, torch.full((2,), 0.02), rtol=1e-3, atol=0)


def test_spsa_beats_random_noise_without_gradients() -> None:
    op, x, y = _setup()
    direction = torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    direction = direction / direction.norm()

    def f(yy: torch.Tensor) -> torch.Tensor:  # large gain along one image direction
        z = op.A_adjoint(yy).real
        out: torch.Tensor = z + 50 * (z * direction).sum((-2, -1)).reshape(-1, 1, 1) * direction
        return out

    common = {"threat_model": "image", "eps": [0.02], "restarts": 1, "step_size": 0.5, "seed": 0}
    spsa = budget_search(f, op, x, y, iterations=15, gradients=False, **common)[0]  # type: ignore[arg-type]
    assert spsa.queries == 15 * (1 + 2 * 8)
    gen = torch.Generator().manual_seed(5)
    r = torch.randn(x.shape, generator=gen, dtype=torch.complex64)
    r = r * (0.02 * x.flatten(1).norm(dim=1) / r.flatten(1).norm(dim=1)).reshape(-1, 1, 1)
    noise_change = output_change(f(y + op.A(r)), f(y))
    assert torch.all(spsa.change > 3 * noise_change)


def test_pnas_search_orders_r1_r2_r3() -> None:
    op, x, y = _setup()
    result = pnas_search(
        op.A_adjoint,
        op,
        x,
        y,
        iterations=40,
        lam=0.0,
        momentum=0.9,
        step=0.05,
        init_scale=0.001,
        max_norm=0.02,
        max_output_change=10.0,
        checkpoints=[0.33, 0.66, 1.0],
        seed=0,
    )
    assert result.perturbations.shape == (3, 2, SIZE, SIZE)
    assert torch.all(result.sizes[0] <= result.sizes[1])
    assert torch.all(result.sizes[1] <= result.sizes[2])
    assert torch.all(result.changes[0] <= result.changes[2])
    assert result.stop_reason.startswith(("||r|| reached", "iteration limit"))
    assert len(result.loss_curve) >= 1
