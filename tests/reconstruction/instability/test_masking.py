"""No ``stable`` from a search that was not shown strong: networks whose gradients are masked
(an instability behind a rounding step, an instability branch detached from the graph), routes
whose search was not measured (gradient-free, a straight-through surrogate), and merges of
units that could not sign ``stable`` each; identity-like networks stay ``stable``."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from reconstruction.data import LoadedImage
from reconstruction.instability import STABLE_WORDING, run_perturbation
from reconstruction.instability.common import Unit, seeded
from reconstruction.instability.masking import signs
from reconstruction.instability.numbers import GradientRoute, Perturbation
from reconstruction.instability.perturbation import (
    MEASURED_STRENGTH,
    REQUIRED_STRENGTH,
    merge_perturbation,
    merge_threats,
)
from reconstruction.models import LoadedModel
from reconstruction.models.loader import GradientAccess
from reconstruction.protocols import Masking, Protocol, load_protocol, parse_protocol
from tests.reconstruction.conftest import Leaky, Smooth, subject, truth_of

VERDICTS = Path(__file__).resolve().parents[3] / "docs" / "verdicts.md"

#: a short search (image domain, two eps): converged and agreeing on the networks below
PROTOCOL = """
name: masking-test
version: "1"
seed: 0
images: {max_images: 2}
baseline: {method: total_variation, attack_iterations: 20}
perturbation:
  threat_models: [THREATS]
  budget: {eps: [0.01, 0.03], restarts: 3, keep: 2, iterations: 30, min_iterations: 5,
           plateau_window: 5, plateau_tolerance: TOLERANCE, power_iterations: 3,
           both_ways: false}
  controls: {noise_draws: 1}
  local: {attack: false}
structural: null
sampling: null
"""


def protocol(*threats: str, tolerance: float = 0.01) -> Protocol:
    text = PROTOCOL.replace("THREATS", ", ".join(threats))
    return parse_protocol(text.replace("TOLERANCE", str(tolerance)))


class RoundedLeak(torch.nn.Module):
    """``Leaky(gain)`` behind a rounding of its input to ``step`` (below the perturbations'
    scale: the hidden gain along ``Leaky``'s direction passes through), beside a faint
    differentiable path ``skip x``: the gradient is ``skip`` times the identity's, the
    rounding's derivative zero."""

    def __init__(self, gain: float = 10.0, step: float = 1e-3, skip: float = 0.05) -> None:
        super().__init__()
        self.leaky, self.step, self.skip = Leaky(gain), step, skip

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.skip * x + self.leaky(torch.round(x / self.step) * self.step)
        return out


class DetachedLeak(torch.nn.Module):
    """``Leaky(gain)`` computed in a branch detached from the graph, beside the faint
    differentiable path ``skip x``: the forward pass is ``Leaky``'s, the gradient ``skip`` times
    the identity's."""

    def __init__(self, gain: float = 10.0, skip: float = 0.05) -> None:
        super().__init__()
        self.leaky, self.skip = Leaky(gain), skip

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.skip * x + (self.leaky(x) - self.skip * x).detach()
        return out


def planted_change(model: LoadedModel, leaky: Leaky, truth: Tensor, eps: float) -> float:
    """The relative output change along the hidden gain's direction (imaginary, at the
    radius): the instability the search misses."""
    f = model.reconstructor(differentiable=False)
    y = model.operator.A(truth)
    r = 1j * leaky.direction.to(torch.complex64)[None] * eps * truth.norm()
    with torch.no_grad():
        clean = f(y).abs()
        change = (f(y + model.operator.A(r)).abs() - clean).norm() / clean.norm()
    return float(change)


@pytest.mark.parametrize("network", [RoundedLeak, DetachedLeak], ids=["rounded", "detached"])
def test_an_instability_the_gradient_cannot_see_is_not_signed_stable(
    network: type[RoundedLeak] | type[DetachedLeak], mask_dir: Path, images: list[LoadedImage]
) -> None:
    """The search converges, its starts agree and it finds nothing beyond the baseline (the
    rules before the masking checks said ``stable``), while the planted direction changes the
    output several times the baseline's worst: gradients look masked."""
    net = network()
    model = subject(net, mask_dir)
    assert (model.gradient_access, model.gradient_route) == ("white-box", "exact")
    truth = truth_of(images[:1])
    result = run_perturbation(model, truth, protocol("image"))
    assert result.verdict == "inconclusive", result.reason
    assert result.reason.startswith(
        "no instability found, but gradients look masked: the gradient vanishes where finite "
        "differences do not (image domain, eps = 0.01, image 0, radial direction"
    ), result.reason
    numbers = result.numbers
    assert numbers["convergence"]["converged"]  # the search itself looks finished
    assert not numbers["evidence"]
    assert not numbers["borderline"]
    assert numbers["strength"]["shown"]
    masking = numbers["gradient_masking"]
    assert masking["checked"]
    assert masking["masked"]
    assert masking["passes"] > 0
    for row in numbers["threat_models"]["image"]["results"]:
        radial_gradient = row["masking"]["gradient_slope"][0][0]
        radial_difference = row["masking"]["difference_slope"][0][0]
        assert 0 < radial_gradient < 0.1 * radial_difference
        baseline = row["baseline"]["output_change"][0]
        assert row["network"]["output_change"][0] < baseline
        assert planted_change(model, net.leaky, truth, row["eps"]) > 4 * baseline
    Perturbation.model_validate(result.as_dict())


def _units(model: LoadedModel, truth: Tensor, p: Protocol) -> list[dict[str, Any]]:
    """Test 1 on each image as a unit of its own, its block as results.json holds it."""
    return [
        json.loads(
            json.dumps(
                run_perturbation(
                    model, truth[k : k + 1], p, unit=Unit(k, k, k + 1, seeded(p.seed, 60, k))
                ).as_dict()
            )
        )
        for k in range(truth.shape[0])
    ]


@pytest.fixture(scope="module")
def smooth_units(mask_dir: Path, images: list[LoadedImage]) -> list[dict[str, Any]]:
    return _units(subject(Smooth(), mask_dir), truth_of(images), protocol("image"))


def test_an_identity_like_network_is_stable_with_its_checks_recorded(
    smooth_units: list[dict[str, Any]],
) -> None:
    p = protocol("image")
    merged = merge_perturbation(copy.deepcopy(smooth_units))
    for block in [*smooth_units, merged.as_dict()]:
        assert block["verdict"] == "stable", block["reason"]
        assert block["reason"] == STABLE_WORDING
        assert block["gradient_route"] == "exact"
        assert block["strength"] == {
            "route": "exact",
            "measured": MEASURED_STRENGTH["exact"],
            "required": REQUIRED_STRENGTH,
            "shown": True,
        }
        assert block["masking"] == Masking().model_dump()
        assert block["gradient_masking"]["checked"]
        assert block["gradient_masking"]["signs"] == []
        Perturbation.model_validate(block)
    # every random choice from the protocol's seed: each unit's, the threat model's place
    seeds = [seeded(seeded(p.seed, 60, k), 7, 0) for k in range(2)]
    image = merged.numbers["threat_models"]["image"]
    assert image["masking"]["seeds"] == seeds
    unit_passes = [b["threat_models"]["image"]["masking"]["passes"] for b in smooth_units]
    assert (
        image["masking"]["passes"]
        == sum(unit_passes)
        == merged.numbers["gradient_masking"]["passes"]
    )
    # per eps and image: 4 random draws, one gradient and 2 x 3 finite-difference points
    assert unit_passes == [2 * (4 + 1 + 6)] * 2
    for row in image["results"]:
        m = row["masking"]
        assert len(m["random_best"]) == len(m["gradient_slope"]) == 2  # per image, joined
        for grads, diffs in zip(m["gradient_slope"], m["difference_slope"], strict=True):
            # the gradient is the network's own: its radial derivative is the difference's
            assert grads[0] == pytest.approx(diffs[0], rel=0.02)


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("gradient-free", "gradient-free search only: its strength is not shown"),
        (
            "straight-through surrogate",
            "straight-through surrogate gradient: its strength is not shown",
        ),
    ],
)
def test_units_on_a_route_not_shown_strong_do_not_merge_into_stable(
    smooth_units: list[dict[str, Any]], route: str, reason: str
) -> None:
    """The same numbers as the stable units above, recorded on another route: neither the
    merge of the units nor the parts put side by side may sign ``stable``."""
    blocks = copy.deepcopy(smooth_units)
    for block in blocks:
        block["gradient_route"] = route
    merged = merge_perturbation(blocks)
    assert merged.verdict == "inconclusive"
    assert merged.reason == f"no instability found, but {reason}"
    assert not merged.numbers["strength"]["shown"]
    side_by_side = merge_threats([blocks[0]])
    assert (side_by_side.verdict, side_by_side.reason) == ("inconclusive", merged.reason)
    mixed = [blocks[0], copy.deepcopy(smooth_units[1])]
    with pytest.raises(ValueError, match="gradient_route"):
        merge_perturbation(mixed)


def test_units_without_masking_checks_do_not_merge_into_stable(
    smooth_units: list[dict[str, Any]],
) -> None:
    blocks = copy.deepcopy(smooth_units)
    for block in blocks:
        for row in block["threat_models"]["image"]["results"]:
            del row["masking"]
    merged = merge_perturbation(blocks)
    assert merged.verdict == "inconclusive"
    assert merged.reason == "no instability found, but gradient masking not checked"


@pytest.mark.parametrize(
    ("access", "route", "reason"),
    [
        ("black-box", None, "gradient-free search only: its strength is not shown"),
        (
            "white-box",
            "straight-through surrogate",
            "straight-through surrogate gradient: its strength is not shown",
        ),
    ],
    ids=["gradient-free", "surrogate"],
)
def test_a_search_on_a_route_not_shown_strong_that_finds_nothing_is_inconclusive(
    access: GradientAccess,
    route: GradientRoute | None,
    reason: str,
    mask_dir: Path,
    images: list[LoadedImage],
) -> None:
    """The zero-filled reconstruction (nearly every direction of the measurements equally bad),
    searched with a plateau tolerance an SPSA search reaches within its cap: the search
    plateaus and its starts agree on either route, and finds nothing (the rules before said
    ``stable``)."""
    model = replace(subject(Leaky(0.0), mask_dir), gradient_access=access, route=route)
    p = protocol("measurement", tolerance=0.05)
    result = run_perturbation(model, truth_of(images[:1]), p)
    assert result.verdict == "inconclusive", result.reason
    assert result.reason.startswith(f"no instability found, but {reason}"), result.reason
    assert result.numbers["convergence"]["converged"]
    assert not result.numbers["gradient_masking"]["masked"]
    assert result.numbers["gradient_route"] == model.gradient_route
    rows = result.numbers["threat_models"]["measurement"]["results"]
    # the gradient check runs where there is a gradient (the surrogate's), not without one
    assert all(("gradient_slope" in row["masking"]) == (access == "white-box") for row in rows)


# --------------------------------------------------------------------------------------------
# the signs, on numbers


def _row(eps: float, net: float, base: float, **masking: Any) -> dict[str, Any]:
    return {
        "eps": eps,
        "network": {"output_change": [net], "error": [0.5]},
        "baseline": {"output_change": [base], "error": [0.5]},
        "masking": {"random_best": [0.0], **masking},
    }


def test_each_sign_of_masking_is_found_with_its_figures() -> None:
    settings = Masking()
    healthy = {
        "image": {
            "results": [
                _row(
                    0.01,
                    0.02,
                    0.01,
                    point_value=[0.01],
                    gradient_slope=[[0.02, 1e-4]],
                    difference_slope=[[0.02, 1e-4]],
                ),
                _row(0.03, 0.06, 0.03),
            ]
        }
    }
    assert signs(healthy, "change", settings) == ([], True)

    lucky = copy.deepcopy(healthy)
    lucky["image"]["results"][1]["masking"]["random_best"] = [0.07]
    (found,), _ = signs(lucky, "change", settings)
    assert found == (
        "random perturbations at the radius change the output more than the search's worst "
        "case (image domain, eps = 0.03, image 0: 0.07 against 0.06)"
    )
    # within float rounding's tolerance it ties; the error objective compares errors
    lucky["image"]["results"][1]["masking"]["random_best"] = [0.0603]
    assert signs(lucky, "change", settings)[0] == []
    assert len(signs(lucky, "error", settings)[0]) == 0
    lucky["image"]["results"][1]["masking"]["random_best"] = [0.6]
    assert len(signs(lucky, "error", settings)[0]) == 1

    masked = copy.deepcopy(healthy)
    first = masked["image"]["results"][0]["masking"]
    first["gradient_slope"] = [[0.001, 1e-4]]
    (found,), _ = signs(masked, "change", settings)
    assert found.startswith(
        "the gradient vanishes where finite differences do not (image "
        "domain, eps = 0.01, image 0, radial direction at half the radius"
    )
    first["gradient_slope"] = [[-0.02, 1e-4]]  # of the opposite sign
    assert len(signs(masked, "change", settings)[0]) == 1
    first["gradient_slope"] = [[0.02, 0.0]]  # a random direction, its difference immaterial
    assert signs(masked, "change", settings)[0] == []
    first["difference_slope"] = [[0.02, 0.01]]  # now material (0.005 across the step)
    (found,), _ = signs(masked, "change", settings)
    assert "random direction 1" in found

    flat = copy.deepcopy(healthy)
    flat["image"]["results"][1]["network"]["output_change"] = [0.02]
    (found,), _ = signs(flat, "change", settings)
    assert found == (
        "the search does not grow with the radius (image domain, image 0: 0.02 at eps = 0.03, "
        "0.02 at eps = 0.01; the baseline's 0.01 to 0.03)"
    )
    flat["image"]["results"][1]["baseline"]["output_change"] = [0.01]  # nor does the baseline's
    assert signs(flat, "change", settings)[0] == []

    unchecked = copy.deepcopy(healthy)
    del unchecked["image"]["results"][1]["masking"]
    assert signs(unchecked, "change", settings) == ([], False)


# --------------------------------------------------------------------------------------------
# the rule's documents


def test_every_measured_route_strength_is_stated_in_the_verdicts_document() -> None:
    text = VERDICTS.read_text(encoding="utf-8")
    for route, measured in MEASURED_STRENGTH.items():
        (row,) = re.findall(rf"^\| `{re.escape(route)}` \|.*$", text, flags=re.MULTILINE)
        cells = [c.strip() for c in row.strip("|").split("|")]
        if measured is None:
            assert cells[2] == "not measured", row
            assert cells[3].startswith("no"), row
        else:
            assert cells[2].startswith(f"{measured:g}:"), row
            assert (cells[3] == "yes") == (measured >= REQUIRED_STRENGTH), row


def test_masking_settings_keep_the_builtin_hashes_unless_changed() -> None:
    quick = load_protocol("quick")
    assert quick.perturbation is not None
    assert quick.perturbation.masking == Masking()
    assert "masking" not in json.loads(quick.canonical_json())["perturbation"]
    data = quick.model_dump(mode="json")
    data["perturbation"]["masking"]["random_draws"] = 8
    more = Protocol.model_validate(data)
    assert more.sha256 != quick.sha256
    assert json.loads(more.canonical_json())["perturbation"]["masking"]["random_draws"] == 8
