"""The product's search, at the ``standard`` protocol's settings, against an independent, long
reference search (``planted.reference_search``) on planted networks with hidden responses:
at least 0.95x the reference's worst change at every eps and image, with at most a fifth of
its forward+backward passes. For the saturating switches the reference also starts along the
trigger it knows by construction (both signs), so it trips every switch the ball can reach."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reconstruction.attacks import budget_search
from reconstruction.data import LoadedImage
from reconstruction.instability.common import network_reconstructor
from reconstruction.protocols import load_protocol
from tests.reconstruction.conftest import SIZE, subject, symmetric_mask, truth_of
from tests.reconstruction.planted import (
    BeyondNorm,
    Decoy,
    SaturatingSwitch,
    Switch,
    reference_search,
)

NETWORKS: dict[str, Callable[[], torch.nn.Module]] = {
    "switch": lambda: Switch(SIZE, threshold=0.003),
    "beyond-norm": lambda: BeyondNorm(SIZE, threshold=0.01),
    "decoy": lambda: Decoy(SIZE),
}


#: (seed of the trigger, depth): the trigger sits saturated on one of the two images, its
#: ``|<w, Re z>|`` ``depth`` temperatures from zero (``sech^2`` 1e-2 to 1e-5: a gradient that
#: many times below the identity path's), and within the larger balls' reach
SATURATING = [(1, 5.0), (6, 3.0), (6, 6.5), (7, 5.0)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETWORKS))
def test_standard_search_reaches_the_reference_at_a_fifth_of_its_cost(
    name: str, mask_dir: Path, images: list[LoadedImage]
) -> None:
    model = subject(NETWORKS[name](), mask_dir)
    f = network_reconstructor(model)
    op = model.operator
    x = truth_of(images)
    budget = load_protocol("standard").perturbation.budget  # type: ignore[union-attr]
    ours = budget_search(
        f, op, x, op.A(x), threat_model="image", eps=budget.eps, settings=budget.settings(), seed=0
    )
    reference_passes = 0
    for result in ours.results:
        best, passes = reference_search(f, op, x, result.eps, restarts=6, iterations=300)
        reference_passes += passes
        assert torch.all(result.change >= 0.95 * best), (result.eps, result.change, best)
    assert ours.passes / x.shape[0] <= reference_passes / 5


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "depth"), SATURATING)
def test_standard_search_trips_saturating_switches_off_the_top_singular_direction(
    seed: int, depth: float, mask_dir: Path, images: list[LoadedImage]
) -> None:
    """The family of "Verdicts you can trust IV": the identity path's flat spectrum hides the
    switch from power iteration and its gradient is exponentially small where it sits; the
    search must still reach what a search told the trigger reaches (the old power-iteration
    start reached 0.14-0.2x of it on three of these four)."""
    x = truth_of(images)
    module = SaturatingSwitch(torch.from_numpy(symmetric_mask()), 1.0, seed=seed)
    model = subject(module, mask_dir)
    op = model.operator
    argument = module.saturate(op, x, depth)
    f = network_reconstructor(model)
    budget = load_protocol("standard").perturbation.budget  # type: ignore[union-attr]
    ours = budget_search(
        f, op, x, op.A(x), threat_model="image", eps=budget.eps, settings=budget.settings(), seed=0
    )
    reference_passes, tripped = 0, 0
    for result in ours.results:
        best, passes = reference_search(
            f, op, x, result.eps, restarts=2, iterations=150, directions=[module.trigger]
        )
        reference_passes += passes
        assert torch.all(result.change >= 0.95 * best), (result.eps, result.change, best)
        # tripped: the switch's argument moved across zero
        moved = op.A_adjoint(op.A(x + result.perturbation)).real
        tripped += int(((moved * module.trigger).sum((-2, -1)) * argument < 0).sum())
    assert tripped >= 2, "the family must hold switches the larger balls can reach"
    assert ours.passes / x.shape[0] <= reference_passes / 5
