"""The searches, on maps whose worst case is known in closed form."""

from __future__ import annotations

import pytest
import torch

from reconstruction.attacks import (
    SearchSettings,
    budget_search,
    output_change,
    pnas_search,
    relative_norm,
)
from reconstruction.data import shepp_logan
from reconstruction.operators import SingleCoilMRI
from reconstruction.sampling import variable_density

SIZE = 32
QUICK = SearchSettings(restarts=2, keep=1, iterations=30, plateau_window=5, power_iterations=3)


def _setup() -> tuple[SingleCoilMRI, torch.Tensor, torch.Tensor]:
    op = SingleCoilMRI(variable_density((SIZE, SIZE), 0.3, seed=0))
    x = torch.from_numpy(shepp_logan(SIZE)).float()[None].repeat(2, 1, 1)
    x[1] = x[1].flip(-1)
    return op, x, op.A(x)


def test_budget_search_reaches_the_linear_bound_and_plateaus() -> None:
    """For f = A^H (zero-filling), ||f(y + A r) - f(y)|| = ||A^H A r|| <= ||r||, attained by r in
    the row space of A: the search must get close to eps ||x|| / ||A^H y||, and say it is done."""
    op, x, y = _setup()
    search = budget_search(
        op.A_adjoint, op, x, y, threat_model="image", eps=[0.01, 0.02], settings=QUICK, seed=0
    )
    bound_per_eps = relative_norm(x.to(torch.complex64), op.A_adjoint(y))
    # the Jacobian of A^H composed with A is the projection A^H A: its top singular value is 1
    assert search.amplification is not None
    torch.testing.assert_close(search.amplification, bound_per_eps, rtol=1e-3, atol=0)
    assert search.jacobian_method == "autograd"
    for result in search.results:
        bound = result.eps * bound_per_eps
        assert torch.all(result.size <= result.eps * (1 + 1e-5))
        assert torch.all(result.change <= bound * (1 + 1e-4))
        assert torch.all(result.change >= 0.99 * bound)
        assert bool(result.plateaued.all())
        assert torch.all(result.iterations <= 2 * QUICK.iterations)
        assert torch.all(result.restart_spread <= 0.01)
        assert len(result.loss_curves) == 2
        assert len(result.restart_changes) == 2
        assert len(result.restart_changes[0]) == 2
        assert result.passes > 0
    # the largest ball first, its best point warm-starting the smaller one
    assert search.results[1].starts == ["jacobian", "random"]
    assert search.results[0].starts == ["warm", "jacobian"]
    assert search.passes >= sum(r.passes for r in search.results)


@pytest.mark.parametrize("lift", [0.05, 0.003])
def test_the_jacobian_start_finds_a_small_lift_of_a_flat_spectrum(lift: float) -> None:
    """f(y) = A^H y + lift <w, A^H y> w (w a unit in-band pattern): the Jacobian is the
    projection A^H A, whose in-band singular values are all 1, lifted to 1 + lift along w. Power
    iteration converges at (1 / (1 + lift))^2 a product, so a few products leave it near a
    random in-band direction; the Krylov start must return w itself, and sigma = 1 + lift."""
    op, x, y = _setup()
    gen = torch.Generator().manual_seed(3)
    w = op.A_adjoint(op.A(torch.randn(SIZE, SIZE, generator=gen)[None]))[0]
    w = w / w.norm()

    def f(meas: torch.Tensor) -> torch.Tensor:
        z = op.A_adjoint(meas)
        along = (z * w.conj()).sum((-2, -1)).real
        out: torch.Tensor = z + lift * along[:, None, None] * w
        return out

    search = budget_search(f, op, x, y, threat_model="image", eps=[0.01], settings=QUICK, seed=0)
    clean = f(y)
    expected = (1 + lift) * relative_norm(x.to(torch.complex64), clean)
    assert search.amplification is not None
    torch.testing.assert_close(search.amplification, expected, rtol=1e-4, atol=0)
    # the start itself: the first result's "jacobian" start reaches the lifted bound
    result = search.results[0]
    k = result.starts.index("jacobian")
    bound = 0.01 * expected
    assert min(result.restart_changes[k]) >= bound.min() * (1 - 1e-3)


def test_a_search_stopped_at_its_cap_does_not_claim_a_plateau() -> None:
    op, x, y = _setup()
    capped = SearchSettings(restarts=1, keep=1, iterations=3, min_iterations=1, plateau_window=5)
    result = budget_search(
        op.A_adjoint, op, x, y, threat_model="image", eps=[0.02], settings=capped, seed=0
    ).results[0]
    assert not bool(result.plateaued.any())
    assert torch.all(result.iterations == 3)
    assert bool(torch.isnan(result.restart_spread).all())  # one start: agreement not shown


def test_measurement_threat_model_and_determinism() -> None:
    op, x, y = _setup()
    kwargs = {"threat_model": "measurement", "eps": [0.02], "settings": QUICK, "seed": 3}
    first = budget_search(op.A_adjoint, op, x, y, **kwargs).results[0]  # type: ignore[arg-type]
    second = budget_search(op.A_adjoint, op, x, y, **kwargs).results[0]  # type: ignore[arg-type]
    assert torch.equal(first.perturbation, second.perturbation)
    torch.testing.assert_close(first.measurement_size, torch.full((2,), 0.02), rtol=1e-4, atol=0)
    # A^H is an isometry on measurements (A A^H = I): the change is eps ||y|| / ||A^H y|| = eps
    torch.testing.assert_close(first.change, torch.full((2,), 0.02), rtol=1e-3, atol=0)


def test_error_objective_moves_away_from_the_truth() -> None:
    op, x, y = _setup()
    kwargs = {"threat_model": "image", "eps": [0.02], "settings": QUICK, "seed": 0}
    change = budget_search(op.A_adjoint, op, x, y, **kwargs).results[0]  # type: ignore[arg-type]
    error = budget_search(op.A_adjoint, op, x, y, objective="error", **kwargs).results[0]  # type: ignore[arg-type]
    assert torch.all(error.error >= change.error - 1e-6)
    assert torch.all(error.error > output_change(op.A_adjoint(y), x.to(torch.complex64)))


def test_adam_steps_and_the_adam_method_reach_the_bound() -> None:
    op, x, y = _setup()
    settings = SearchSettings(
        restarts=2, keep=1, iterations=200, plateau_window=20, method="adam", jacobian_start=False
    )
    result = budget_search(
        op.A_adjoint, op, x, y, threat_model="image", eps=[0.02], settings=settings, seed=0
    ).results[0]
    bound = 0.02 * relative_norm(x.to(torch.complex64), op.A_adjoint(y))
    assert torch.all(result.change >= 0.95 * bound)
    assert result.starts == ["random", "random"]


def test_spsa_beats_random_noise_without_gradients() -> None:
    op, x, y = _setup()
    direction = torch.randn(SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    direction = direction / direction.norm()

    def f(yy: torch.Tensor) -> torch.Tensor:  # large gain along one image direction
        z = op.A_adjoint(yy).real
        out: torch.Tensor = z + 50 * (z * direction).sum((-2, -1)).reshape(-1, 1, 1) * direction
        return out

    settings = SearchSettings(restarts=1, iterations=15, step_size=0.5, plateau_window=15)
    search = budget_search(
        f, op, x, y, threat_model="image", eps=[0.02], settings=settings, seed=0, gradients=False
    )
    spsa = search.results[0]
    assert search.amplification is None
    assert spsa.queries == 2 * 15 * (1 + 2 * 8)
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


def test_a_device_out_of_memory_halves_the_batch_and_computes_the_same() -> None:
    """A map that holds at most 3 items at once (as a GPU would, raising out of memory): the
    search cuts its passes into halves, then quarters, and finds what the unlimited map finds."""
    op, x, y = _setup()

    def f(v: torch.Tensor) -> torch.Tensor:
        z = op.A_adjoint(v)
        return z * torch.tanh(z.abs())  # each item on its own: a nonlinear, per-item map

    batches: list[int] = []

    def small(v: torch.Tensor) -> torch.Tensor:
        batches.append(v.shape[0])
        if v.shape[0] > 3 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("planted: 3 items at most")
        return f(v)

    kwargs = {"threat_model": "image", "eps": [0.01, 0.04], "settings": QUICK, "seed": 5}
    whole = budget_search(f, op, x, y, **kwargs)  # type: ignore[arg-type]
    cut = budget_search(small, op, x, y, **kwargs)  # type: ignore[arg-type]
    assert max(batches) > 3  # refused,
    assert 0 < min(batches) <= 3  # then cut
    for a, b in zip(whole.results, cut.results, strict=True):
        torch.testing.assert_close(a.change, b.change, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.perturbation, b.perturbation, rtol=1e-4, atol=1e-6)
        assert torch.equal(a.iterations, b.iterations)

    def none(v: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise torch.OutOfMemoryError("planted: no room at all")
        return f(v)

    with pytest.raises(torch.OutOfMemoryError):
        budget_search(none, op, x, y, **kwargs)  # type: ignore[arg-type]
