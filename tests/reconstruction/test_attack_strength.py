"""The product's search, at the ``standard`` protocol's settings, against an independent, long
reference search (``planted.reference_search``) on planted networks with hidden responses:
at least 0.95x the reference's worst change at every eps and image, with at most a fifth of
its forward+backward passes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reconstruction.attacks import budget_search
from reconstruction.data import LoadedImage
from reconstruction.instability.common import network_reconstructor
from reconstruction.protocols import load_protocol
from tests.reconstruction.conftest import SIZE, subject, truth_of
from tests.reconstruction.planted import BeyondNorm, Decoy, Switch, reference_search

NETWORKS: dict[str, Callable[[], torch.nn.Module]] = {
    "switch": lambda: Switch(SIZE, threshold=0.003),
    "beyond-norm": lambda: BeyondNorm(SIZE, threshold=0.01),
    "decoy": lambda: Decoy(SIZE),
}


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
