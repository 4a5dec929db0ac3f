from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from reconstruction.data import LoadedImage
from reconstruction.instability import STABLE_WORDING, Subject, common, run_structural
from reconstruction.instability.structural import judge_details
from reconstruction.protocols import Protocol, StructuralThresholds, parse_protocol
from reconstruction.suite import prepare_images
from tests.reconstruction.conftest import (
    SIZE,
    SMALL_PROTOCOL,
    Eraser,
    Leaky,
    PartialEraser,
    Smooth,
    subject,
)


def test_network_erasing_details_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_structural(subject(Eraser(), mask_dir), truth, small_protocol)
    assert result.verdict == "unstable", result.reason
    counts = result.numbers["counts"]
    assert counts["missed_by_network"] >= 1
    assert counts["visible_baseline"] >= counts["missed_by_network"]
    assert result.figures["panels"]
    (cls,) = result.numbers["classes"]
    assert cls["confirmed"]
    assert cls["missed"] == cls["visible_baseline"] >= 2
    assert result.numbers["smallest_recovered_px"]["network"] == {"0.4": None}
    assert result.numbers["smallest_recovered_px"]["baseline"] == {"0.4": 10}
    # the report's crops: missed details first, each with its box inside the crop
    panel = result.figures["panels"][0]
    r0, c0, r1, c1 = panel["box"]
    assert 0 <= r0 < r1 <= panel["truth"].shape[0]
    assert 0 <= c0 < c1 <= panel["truth"].shape[1]
    first = next(r for r in result.numbers["details"] if r["name"] == panel["name"])
    assert first["missed"]


def test_zero_filled_keeps_details(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    result = run_structural(subject(Leaky(0.0), mask_dir), truth, small_protocol)
    assert result.verdict in ("stable", "inconclusive"), result.reason


def test_custom_details_are_placed_and_scored(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    ring = np.zeros((20, 20), bool)
    ring[2:18, 2:18] = True
    ring[6:14, 6:14] = False
    result = run_structural(
        subject(Leaky(0.0), mask_dir), truth, small_protocol, custom=[("ring", ring)]
    )
    names = {row["name"] for row in result.numbers["details"]}
    assert "ring-10px" in names
    assert len(names) >= 2  # the standard details are still placed beside the custom one


#: two contrasts of 8-pixel suits: more details fit the small phantoms
EIGHT_PX = yaml.safe_load(SMALL_PROTOCOL)
EIGHT_PX["structural"].update({"heights_px": [8], "contrasts": [0.2, 0.4]})


@pytest.fixture(scope="module")
def eight_px() -> Protocol:
    return parse_protocol(yaml.safe_dump(EIGHT_PX))


def _truth(images: list[LoadedImage]) -> torch.Tensor:
    return torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])


def test_partial_eraser_is_unstable(
    mask_dir: Path, images: list[LoadedImage], eight_px: Protocol
) -> None:
    """Details keep 30 % of their contrast: still there, but below what the baseline shows."""
    result = run_structural(subject(PartialEraser(0.3), mask_dir), _truth(images), eight_px)
    assert result.verdict == "unstable", result.reason
    classes = result.numbers["classes"]
    assert [(c["height_px"], c["contrast"]) for c in classes] == [(8, 0.2), (8, 0.4)]
    assert all(c["confirmed"] and c["images"] == 2 for c in classes)
    assert result.numbers["paired"]["ci_low"] > 0.0


@pytest.mark.parametrize("kind", ["zero-filled", "smooth", "baseline"])
def test_identity_like_nets_and_the_baseline_keep_details(
    mask_dir: Path, images: list[LoadedImage], eight_px: Protocol, kind: str
) -> None:
    model = subject(Smooth() if kind == "smooth" else Leaky(0.0), mask_dir)
    audited: Subject = model
    if kind == "baseline":
        audited = common.BaselineSubject(
            model.manifest, model.operator, model.mask, eight_px.baseline
        )
    result = run_structural(audited, _truth(images), eight_px)
    assert result.verdict == "stable", result.reason
    assert result.reason == STABLE_WORDING
    assert result.numbers["counts"]["missed_by_network"] == 0
    assert result.numbers["counts"]["visible_baseline"] >= 4
    smallest = result.numbers["smallest_recovered_px"]
    assert smallest["network"] == smallest["baseline"] == {"0.2": 8, "0.4": 8}


# --------------------------------------------------------------------------- the rule itself
def _row(image: int, height: int, net: float, base: float, contrast: float = 0.3) -> dict[str, Any]:
    """A scored detail: contrast recoveries of network and baseline (visible at 0.5)."""

    def score(recovery: float) -> dict[str, float]:
        return {
            "contrast_recovery": recovery,
            "correlation": 0.9 if recovery > 0.2 else 0.1,
            "visible": float(recovery >= 0.5),
        }

    return {
        "image": image,
        "name": f"spade-{height}px",
        "height_px": height,
        "class_contrast": contrast,
        "network": score(net),
        "baseline": score(base),
    }


TH = StructuralThresholds()


def test_a_size_selective_eraser_is_unstable_and_its_smallest_size_reported() -> None:
    rows = [_row(i, 8, 0.1 + 0.02 * i, 0.8) for i in range(4)]
    rows += [_row(i, 16, 0.9, 0.9) for i in range(4)]
    verdict, reason, numbers = judge_details(rows, TH)
    assert verdict == "unstable", reason
    assert "at height 8 px" in reason
    assert numbers["smallest_recovered_px"] == {
        "network": {"0.3": 16},
        "baseline": {"0.3": 8},
    }
    eight, sixteen = numbers["classes"]
    assert eight["every_detail"]
    assert eight["significant"]
    assert not sixteen["beyond_margin"]
    assert numbers["counts"]["missed_per_image"] == {"0": 1, "1": 1, "2": 1, "3": 1}


def test_an_isolated_miss_is_counted_but_not_an_instability() -> None:
    """One borderline miss among details the network otherwise recovers as well as the baseline."""
    rows = [_row(i, 8, 0.8, 0.8) for i in range(5)] + [_row(5, 8, 0.45, 0.75)]
    verdict, reason, numbers = judge_details(rows, TH)
    assert (verdict, reason) == ("stable", STABLE_WORDING)
    assert numbers["counts"]["missed_by_network"] == 1
    assert not numbers["classes"][0]["beyond_margin"]


def test_losses_the_details_disagree_on_or_a_single_detail_are_inconclusive() -> None:
    scattered = [_row(0, 8, 0.1, 0.9), _row(1, 8, 0.9, 0.9), _row(2, 8, 0.2, 0.6)]
    verdict, reason, numbers = judge_details(scattered, TH)
    assert verdict == "inconclusive", reason
    assert numbers["classes"][0]["beyond_margin"]
    assert "includes zero" in reason
    verdict, reason, _ = judge_details([_row(0, 8, 0.1, 0.9), _row(1, 8, 0.1, 0.3)], TH)
    assert verdict == "inconclusive"
    assert "only one detail" in reason


def test_details_the_baseline_cannot_show_say_nothing() -> None:
    verdict, reason, _ = judge_details([_row(i, 8, 0.1, 0.2) for i in range(3)], TH)
    assert verdict == "inconclusive"
    assert "baseline shows none" in reason


def test_details_are_added_to_measured_data(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    """With measured k-space, details go into the measurements as ``y + A d``: on k-space that
    is the images' own, the test sees what it sees on simulated measurements."""
    from reconstruction.measured import simulated_kspace

    truth = torch.from_numpy(prepare_images(images, (SIZE, SIZE), (0.0, 1.0))[0])
    model = subject(Eraser(), mask_dir)
    kspace = torch.from_numpy(np.stack([simulated_kspace(t, model.operator) for t in truth]))
    simulated = run_structural(model, truth, small_protocol)
    measured = run_structural(model, truth, small_protocol, data=common.AuditData(kspace=kspace))
    assert measured.verdict == simulated.verdict
    for a, b in zip(measured.numbers["details"], simulated.numbers["details"], strict=True):
        assert a["network"]["contrast_recovery"] == pytest.approx(
            b["network"]["contrast_recovery"], abs=1e-3
        )
