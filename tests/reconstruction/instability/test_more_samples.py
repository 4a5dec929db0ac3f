from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reconstruction.data import LoadedImage, random_ellipses
from reconstruction.instability import STABLE_WORDING, Subject, common, run_more_samples
from reconstruction.instability.more_samples import judge_ladder, sampling_ladder
from reconstruction.operators import ParallelBeamCT, SingleCoilMRI
from reconstruction.protocols import Protocol, SamplingThresholds
from tests.reconstruction.conftest import (
    SIZE,
    GentleDecliner,
    Leaky,
    SampleHungry,
    Smooth,
    Stagnating,
    subject,
    symmetric_mask,
    truth_of,
)


def test_ladder_is_nested_and_capped() -> None:
    op = SingleCoilMRI(symmetric_mask())
    ladder = sampling_ladder(op, [0.5, 1.0, 2.0, 10.0], seed=0)
    ratios = [r for _, r, _ in ladder]
    assert ratios == sorted(ratios)
    assert ratios[-1] == 1.0
    masks = [o.mask.numpy() for _, _, o in ladder if isinstance(o, SingleCoilMRI)]
    for small, large in itertools.pairwise(masks):
        assert np.all(small <= large)
    ct = sampling_ladder(ParallelBeamCT(32, 20), [0.5, 1.0, 2.0], seed=0)
    assert [r for _, r, _ in ct] == [10.0, 20.0, 40.0]


def test_quality_falling_with_more_samples_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(SampleHungry(count), mask_dir, domain="measurements")
    truth = truth_of(images)
    result = run_more_samples(model, truth, small_protocol)
    assert result.verdict == "unstable", result.reason
    assert result.numbers["pattern"] == "decay"
    ladder = result.numbers["ladder"]
    assert [r["training"] for r in ladder] == [False, True, False]


def test_fixed_size_networks_are_skipped(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    class Flat(torch.nn.Module):
        def __init__(self, samples: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2 * samples, SIZE * SIZE)

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = torch.sigmoid(self.fc(y.flatten(1)))
            return out.reshape(-1, 1, SIZE, SIZE).repeat(1, 2, 1, 1) * 0.5

    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(Flat(count), mask_dir, domain="samples")
    truth = truth_of(images)
    result = run_more_samples(model, truth, small_protocol)
    assert result.verdict == "skipped"
    assert "cannot take more samples" in result.reason


# --------------------------------------------------------------------------- planted networks
def _truth(images: list[LoadedImage], extra: int = 0) -> torch.Tensor:
    more = [LoadedImage(random_ellipses(1, SIZE, 11 + i)[0], f"e{i}", {}) for i in range(extra)]
    return truth_of([*images, *more])


def _step_declines(result: common.TestResult) -> list[float]:
    curve = [float(np.mean(r["network"]["psnr_db"])) for r in result.numbers["ladder"]]
    return [float(b - a) for a, b in itertools.pairwise(curve)]


@pytest.mark.parametrize("extra", [0, 1])
def test_gentle_steady_decline_is_unstable(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol, extra: int
) -> None:
    """Every step loses less than the 1 dB threshold, the ladder as a whole more: the decline
    from 0.5x to 2x is found (2 images: each declines; 3 images: the interval excludes 0)."""
    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(GentleDecliner(count), mask_dir, domain="measurements")
    result = run_more_samples(model, _truth(images, extra), small_protocol)
    steps = _step_declines(result)
    assert all(-1.0 < step < 0.0 for step in steps), steps
    assert result.verdict == "unstable", result.reason
    decline = result.numbers["decline"]
    assert (decline["metric"], decline["from_factor"], decline["to_factor"]) == (
        "psnr_db",
        0.5,
        2.0,
    )
    assert decline["decline"] > 1.0
    assert decline["baseline"]["mean"] > 0.0
    if extra:
        assert decline["significant"]
    assert result.numbers["largest_decline"]["psnr_db"] == decline
    assert "from ratio" in result.reason
    assert "factor 0.5" in result.reason


def test_a_single_image_cannot_confirm_a_decline(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    count = int(np.load(mask_dir / "mask.npy").sum())
    model = subject(GentleDecliner(count), mask_dir, domain="measurements")
    result = run_more_samples(model, _truth(images)[:1], small_protocol)
    assert result.verdict == "inconclusive", result.reason
    assert result.numbers["pattern"] == "unconfirmed_decay"
    assert "one image" in result.reason


def test_stagnating_network_is_inconclusive(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    model = subject(Stagnating(np.load(mask_dir / "mask.npy")), mask_dir, domain="measurements")
    result = run_more_samples(model, _truth(images), small_protocol)
    assert result.verdict == "inconclusive", result.reason
    assert result.numbers["pattern"] == "stagnation"
    assert abs(result.numbers["network_gain_db"]) < 1e-3
    assert result.numbers["baseline_gain_db"] > 1.0


@pytest.mark.parametrize("kind", ["zero-filled", "smooth", "baseline"])
def test_identity_like_nets_and_the_baseline_stay_stable(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol, kind: str
) -> None:
    model = subject(Smooth() if kind == "smooth" else Leaky(0.0), mask_dir)
    audited: Subject = model
    if kind == "baseline":
        audited = common.BaselineSubject(
            model.manifest, model.operator, model.mask, small_protocol.baseline
        )
    result = run_more_samples(audited, _truth(images), small_protocol)
    assert result.verdict == "stable", result.reason
    assert result.reason == STABLE_WORDING
    assert result.numbers["pattern"] == "monotone"
    assert result.numbers["declines_beyond_threshold"] == 0
    assert all(step > 0.0 for step in _step_declines(result))


# --------------------------------------------------------------------------- the rule itself
FACTORS = (0.5, 1.0, 2.0)


def _ladder(
    network: list[list[float]],
    baseline: list[list[float]] | None = None,
    ssim: list[list[float]] | None = None,
) -> list[dict[str, Any]]:
    """Rows for :func:`judge_ladder`: per ratio, the per-image PSNR (and SSIM) lists."""
    baseline = baseline or [[20.0 + 14.0 * k] * len(network[0]) for k in range(len(network))]
    ssim = ssim or [[0.5 + 0.1 * k] * len(network[0]) for k in range(len(network))]
    return [
        {
            "factor": factor,
            "ratio": 0.1 * factor,
            "training": factor == 1.0,
            "network": {"psnr_db": net, "ssim": s},
            "baseline": {"psnr_db": base, "ssim": [0.6 + 0.1 * k] * len(net)},
        }
        for k, (factor, net, base, s) in enumerate(
            zip(FACTORS, network, baseline, ssim, strict=True)
        )
    ]


THRESHOLDS = SamplingThresholds()


def test_the_issue_example_is_unstable_not_stagnation() -> None:
    """-1.1 dB then -0.6 dB (-1.7 dB in all) while the baseline gains 28 dB, on five images."""
    jitter = [0.0, 0.1, -0.1, 0.05, -0.05]
    curve = [[30.0 + j for j in jitter], [28.9 + j for j in jitter], [28.3 + j for j in jitter]]
    verdict, reason, numbers = judge_ladder(_ladder(curve), THRESHOLDS)
    assert verdict == "unstable", reason
    assert numbers["pattern"] == "decay"
    decline = numbers["decline"]
    assert (decline["from_factor"], decline["to_factor"]) == (0.5, 2.0)
    assert decline["decline"] == pytest.approx(1.7)
    assert decline["significant"]
    assert decline["every_image"]
    assert decline["network"]["differences"] == pytest.approx([-1.7] * 5)
    # every pair of the ladder is compared, for PSNR and SSIM
    assert len(numbers["comparisons"]) == 2 * 3
    # on one image nothing can be confirmed: at most inconclusive
    verdict, reason, numbers = judge_ladder(_ladder([row[:1] for row in curve]), THRESHOLDS)
    assert (verdict, numbers["pattern"]) == ("inconclusive", "unconfirmed_decay"), reason


def test_a_decline_the_images_disagree_on_is_not_confirmed() -> None:
    curve = [[30.0, 30.0, 30.0, 30.0], [30.0, 30.0, 30.0, 30.0], [26.0, 26.5, 32.5, 29.0]]
    verdict, reason, numbers = judge_ladder(_ladder(curve), THRESHOLDS)
    assert verdict == "inconclusive", reason
    decline = numbers["decline"]
    assert decline["decline"] == pytest.approx(1.5)
    assert not decline["significant"]
    assert not decline["every_image"]
    assert "includes zero" in reason


def test_a_decline_the_baseline_shares_is_not_the_network_s() -> None:
    curve = [[30.0, 31.0], [28.0, 29.0], [26.0, 27.0]]
    verdict, reason, _ = judge_ladder(_ladder(curve, baseline=curve), THRESHOLDS)
    assert verdict == "inconclusive"
    assert "baseline declines" in reason


def test_an_ssim_decline_alone_is_unstable() -> None:
    psnr = [[30.0, 31.0, 32.0], [31.0, 32.0, 33.0], [32.0, 33.0, 34.0]]
    ssim = [[0.80, 0.81, 0.82], [0.75, 0.76, 0.77], [0.70, 0.71, 0.72]]
    verdict, reason, numbers = judge_ladder(_ladder(psnr, ssim=ssim), THRESHOLDS)
    assert verdict == "unstable", reason
    assert numbers["decline"]["metric"] == "ssim"
    assert numbers["decline"]["decline"] == pytest.approx(0.1)
    assert "SSIM" in reason


def test_improvement_and_stagnation_keep_their_verdicts() -> None:
    rising = [[20.0, 21.0], [24.0, 25.0], [30.0, 31.0]]
    verdict, reason, numbers = judge_ladder(_ladder(rising), THRESHOLDS)
    assert (verdict, reason, numbers["pattern"]) == ("stable", STABLE_WORDING, "monotone")
    flat = [[20.0, 21.0], [24.0, 25.0], [24.5, 25.3]]
    verdict, reason, numbers = judge_ladder(_ladder(flat), THRESHOLDS)
    assert (verdict, numbers["pattern"]) == ("inconclusive", "stagnation"), reason


def test_ct_reasons_name_angle_counts() -> None:
    curve = [[30.0, 31.0], [28.0, 29.0], [26.0, 27.0]]
    rows = _ladder(curve)
    for row, count in zip(rows, (25.0, 50.0, 100.0), strict=True):
        row["ratio"] = count
    verdict, reason, _ = judge_ladder(rows, THRESHOLDS, unit="angles")
    assert verdict == "unstable"
    assert "from 25 angles (factor 0.5) to 100 angles (factor 2)" in reason
