"""Test 3: more samples -- does the network improve when given more measurements?

Nested sampling patterns around the training one: MRI masks from
:func:`reconstruction.sampling.extend_mask` (subsets and supersets of the manifest's mask with
its density profile, capped at full sampling), CT angle sets from
:func:`reconstruction.sampling.extend_angles` (the training angles kept, more added in the
gaps). Network and baseline are scored (PSNR, SSIM; mean and 95 % CI over images) per ratio.

Verdict (thresholds from the protocol), from every pair of ratios ``r_i < r_j`` of the
ladder and both scores: the per-image paired differences ``score(r_j) - score(r_i)`` (same
images, nested patterns), their mean and its Student-t ``confidence`` interval over images:

* ``unstable`` (decay) -- for some pair the network's mean PSNR falls by more than
  ``decay_db`` (or its SSIM by more than ``decay_ssim``), confirmed by the interval lying below
  zero or by every image (at least two) falling by more than the threshold on its own, and the
  baseline's mean does not fall by more than the threshold over the same step; the largest
  such PSNR decline (else SSIM) is cited;
* ``inconclusive`` (unconfirmed decay) -- a decline beyond the threshold confirmed neither way
  (one image can confirm nothing), or one the baseline shares;
* ``inconclusive`` (stagnation) -- no decline, but from the training ratio to the largest one
  the network gains less than ``stagnation_fraction`` of what the baseline gains;
* ``stable`` -- improvement: "no instability found within the protocol's budget";
* ``skipped`` -- networks whose input size is tied to the number of samples.

No multiple-comparison correction is applied over the pairs: they are nested steps of one
curve on the same images (strongly positively correlated), and a verdict needs a decline
beyond the threshold besides the interval (``docs/verdicts.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction import sampling
from reconstruction.instability.common import (
    STABLE_WORDING,
    AuditData,
    Scoring,
    Subject,
    TestResult,
    Verdict,
    agreed,
    baseline_reconstructor,
    mean_ci,
    measure,
    network_reconstructor,
    seeded,
    to_numpy,
)
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from reconstruction.protocols import Protocol, SamplingThresholds

__all__ = [
    "judge_ladder",
    "merge_more_samples",
    "run_more_samples",
    "sampling_ladder",
]

#: the scores compared between ratios (keys of :func:`reconstruction.instability.common.scores`)
METRICS = ("psnr_db", "ssim")
ROLES = ("network", "baseline")


def sampling_ladder(
    op: LinearOperator, factors: list[float], seed: int
) -> list[tuple[float, float, LinearOperator]]:
    """``(factor, ratio, operator)`` for each factor (duplicates after capping removed).

    MRI ratios are fractions of k-space; CT "ratios" are angle counts relative to the training
    count (reported as the count)."""
    out: list[tuple[float, float, LinearOperator]] = []
    seen: set[float] = set()
    if isinstance(op, ParallelBeamCT):
        n = op.angles.size
        for factor in factors:
            count = max(1, round(factor * n))
            count = min(count, 8 * n)
            if count in seen:
                continue
            seen.add(count)
            angles = sampling.extend_angles(op.angles, count)
            out.append((factor, float(count), ParallelBeamCT(op.image_size, angles, op.detectors)))
        return out
    assert isinstance(op, SingleCoilMRI | MultiCoilMRI)
    mask = op.mask.numpy()
    base = sampling.mask_ratio(mask)
    for factor in factors:
        ratio = min(1.0, factor * base)
        new = mask if factor == 1.0 else sampling.extend_mask(mask, ratio, seed)
        actual = sampling.mask_ratio(new)
        if actual in seen:
            continue
        seen.add(actual)
        if isinstance(op, SingleCoilMRI):
            out.append((factor, actual, SingleCoilMRI(new)))
        else:
            out.append((factor, actual, MultiCoilMRI(new, op.sensitivities.numpy())))
    return out


def run_more_samples(
    subject: Subject,
    truth: Tensor,
    protocol: Protocol,
    *,
    progress: Callable[[int], None] | None = None,
    data: AuditData | None = None,
) -> TestResult:
    """Run test 3 on the images ``truth`` ``[B, H, W]``; ``data``: their measured k-space
    (undersampled with each mask of the ladder) and data ranges (:class:`AuditData`)."""
    cfg = protocol.sampling
    assert cfg is not None
    if subject.fixed_size:
        return TestResult(
            "sampling", "skipped", subject.fixed_size_reason or "the network has a fixed input size"
        )
    ladder = sampling_ladder(subject.operator, list(cfg.factors), seeded(protocol.seed, 30))
    score = Scoring.of(protocol, data)
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"ratios": [], "network": [], "baseline": []}
    for factor, ratio, op in ladder:
        try:
            f_net = network_reconstructor(subject, op, differentiable=False)
            f_base = baseline_reconstructor(op, protocol.baseline, attack=False)
            y = measure(op, truth, data)
            with torch.no_grad():
                net, base = f_net(y), f_base(y)
        except Exception as exc:
            return TestResult(
                "sampling",
                "skipped",
                f"the network cannot take {ratio:g} sampling (factor {factor:g}): "
                f"{type(exc).__name__}: {exc}"[:400],
            )
        rows.append(
            _row(factor, ratio, score(net, truth), score(base, truth), cfg.thresholds.confidence)
        )
        figures["ratios"].append(ratio)
        figures["network"].append(to_numpy(net[0]))
        figures["baseline"].append(to_numpy(base[0]))
        if progress is not None:
            progress(1)
    unit = "angles" if isinstance(subject.operator, ParallelBeamCT) else "fraction of k-space"
    return _judged(rows, cfg.thresholds, unit, figures)


def _row(
    factor: float,
    ratio: float,
    s_net: dict[str, list[float]],
    s_base: dict[str, list[float]],
    confidence: float,
) -> dict[str, Any]:
    """One ratio of the ladder: per role the per-image scores and their means' intervals."""
    return {
        "factor": factor,
        "ratio": ratio,
        "training": factor == 1.0,
        "network": {
            **s_net,
            "psnr": mean_ci(s_net["psnr_db"], confidence),
            "ssim_ci": mean_ci(s_net["ssim"], confidence),
        },
        "baseline": {
            **s_base,
            "psnr": mean_ci(s_base["psnr_db"], confidence),
            "ssim_ci": mean_ci(s_base["ssim"], confidence),
        },
    }


def _judged(
    rows: list[dict[str, Any]], th: SamplingThresholds, unit: str, figures: dict[str, Any]
) -> TestResult:
    verdict, reason, judged = judge_ladder(rows, th, unit=unit)
    numbers: dict[str, Any] = {
        "unit": unit,
        "training_ratio": next(r["ratio"] for r in rows if r["training"]),
        "ladder": rows,
        "thresholds": th.model_dump(),
        **judged,
    }
    return TestResult("sampling", verdict, reason, numbers, figures)


def merge_more_samples(
    blocks: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
) -> TestResult:
    """Test 3 over an audit's units (its blocks of results.json, in image order): per ratio
    the per-image scores joined and their intervals, then every paired comparison and the
    verdict drawn from them, as for one run over every image. A unit skipped (the network
    cannot take a ratio) skips the test. ``figures``: the ladder's figure (the first image at
    every ratio) is the first unit's."""
    skipped = next((b for b in blocks if b["verdict"] == "skipped"), None)
    if skipped is not None:
        return TestResult("sampling", "skipped", skipped["reason"])
    th = SamplingThresholds.model_validate(agreed([b["thresholds"] for b in blocks], "thresholds"))
    ladders = [b["ladder"] for b in blocks]
    agreed([[(r["factor"], r["ratio"]) for r in ladder] for ladder in ladders], "the ladder")
    rows = []
    for k, row in enumerate(ladders[0]):
        joined = {
            role: {
                metric: [v for ladder in ladders for v in ladder[k][role][metric]]
                for metric in ("psnr_db", "ssim", "nmse")
                if metric in row[role]
            }
            for role in ROLES
        }
        rows.append(
            _row(row["factor"], row["ratio"], joined["network"], joined["baseline"], th.confidence)
        )
    return _judged(rows, th, blocks[0]["unit"], {} if figures is None else figures[0])


def judge_ladder(
    rows: list[dict[str, Any]], th: SamplingThresholds, *, unit: str = "fraction of k-space"
) -> tuple[Verdict, str, dict[str, Any]]:
    """The verdict on a scored ladder, its reason and the numbers behind it.

    ``rows``: one per ratio, increasing, each with ``factor``, ``ratio``, ``training`` and, for
    ``network`` and ``baseline``, the per-image ``psnr_db`` and ``ssim`` lists (the same images
    in the same order at every ratio). ``unit``: what a ratio counts (``"angles"`` for CT, where
    the reason names angle counts)."""
    mean = {role: [float(np.mean(r[role]["psnr_db"])) for r in rows] for role in ROLES}
    comparisons = _comparisons(rows, {"psnr_db": th.decay_db, "ssim": th.decay_ssim}, th.confidence)
    numbers: dict[str, Any] = {
        "n_images": len(rows[0]["network"]["psnr_db"]),
        "comparisons": comparisons,
        "largest_decline": {
            metric: _largest([c for c in comparisons if c["metric"] == metric])
            for metric in METRICS
        },
        "monotone": bool(np.all(np.diff(mean["network"]) >= -1e-9)),
    }
    beyond = [c for c in comparisons if c["beyond_threshold"]]
    confirmed = [
        c for c in beyond if (c["significant"] or c["every_image"]) and not c["baseline_declines"]
    ]
    numbers["declines_beyond_threshold"] = len(beyond)
    numbers["declines_confirmed"] = len(confirmed)
    if confirmed:
        worst = _worst(confirmed)
        numbers["pattern"] = "decay"
        numbers["decline"] = worst
        return (
            "unstable",
            f"with more samples the network gets worse: {_describe(worst, th.confidence, unit)}; "
            f"{len(confirmed)} of the {len(comparisons)} comparisons (every pair of ratios, PSNR "
            f"and SSIM) {'shows' if len(confirmed) == 1 else 'show'} such a decline",
            numbers,
        )
    if beyond:
        worst = _worst(beyond)
        numbers["pattern"] = "unconfirmed_decay"
        numbers["decline"] = worst
        return (
            "inconclusive",
            f"possible decay, not confirmed: {_describe(worst, th.confidence, unit)}; "
            + _unconfirmed(worst, th.confidence),
            numbers,
        )
    train = next(k for k, r in enumerate(rows) if r["training"])
    if train < len(rows) - 1:
        net_gain = mean["network"][-1] - mean["network"][train]
        base_gain = mean["baseline"][-1] - mean["baseline"][train]
        numbers["network_gain_db"], numbers["baseline_gain_db"] = net_gain, base_gain
        if base_gain > th.decay_db and net_gain < th.stagnation_fraction * base_gain:
            numbers["pattern"] = "stagnation"
            return (
                "inconclusive",
                f"stagnation: from the training ratio to {rows[-1]['ratio']:g} the network "
                f"gains {net_gain:.2f} dB, less than {th.stagnation_fraction:g} of the "
                f"baseline's {base_gain:.2f} dB",
                numbers,
            )
    numbers["pattern"] = "monotone" if numbers["monotone"] else "improving"
    return "stable", STABLE_WORDING, numbers


def _comparisons(
    rows: list[dict[str, Any]], thresholds: dict[str, float], level: float
) -> list[dict[str, Any]]:
    """Every pair (smaller ratio ``i``, larger ratio ``j``) and metric: the per-image paired
    differences ``score_j - score_i`` of the network and of the baseline, the Student-t
    confidence interval of their mean, and whether the network's mean declines beyond the
    threshold, ``significant`` (the interval below zero: at least two images), ``every_image``
    (each of at least two images declines beyond the threshold on its own), and whether the
    baseline's mean declines beyond the threshold over the same step."""
    out: list[dict[str, Any]] = []
    for metric in METRICS:
        tol = thresholds[metric]
        for i, j in itertools.combinations(range(len(rows)), 2):
            low, high = rows[i], rows[j]
            diff = {
                role: [
                    float(b - a) for a, b in zip(low[role][metric], high[role][metric], strict=True)
                ]
                for role in ROLES
            }
            net, base = mean_ci(diff["network"], level), mean_ci(diff["baseline"], level)
            out.append(
                {
                    "metric": metric,
                    "from_factor": low["factor"],
                    "from_ratio": low["ratio"],
                    "to_factor": high["factor"],
                    "to_ratio": high["ratio"],
                    "network": {**net, "differences": diff["network"]},
                    "baseline": {**base, "differences": diff["baseline"]},
                    "decline": -net["mean"],
                    "beyond_threshold": bool(net["mean"] < -tol),
                    "significant": bool(net["n"] >= 2 and net["ci_high"] < 0.0),
                    "every_image": bool(net["n"] >= 2 and max(diff["network"]) < -tol),
                    "baseline_declines": bool(base["mean"] < -tol),
                }
            )
    return out


def _largest(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The comparison with the network's largest mean decline (None when nothing declines)."""
    declining = [c for c in comparisons if c["decline"] > 0.0]
    return max(declining, key=lambda c: c["decline"]) if declining else None


def _worst(comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    """The decline a verdict cites: the largest PSNR one, else the largest SSIM one."""
    psnr = [c for c in comparisons if c["metric"] == "psnr_db"]
    return max(psnr or comparisons, key=lambda c: c["decline"])


def _where(ratio: float, unit: str) -> str:
    return f"{ratio:g} angles" if unit == "angles" else f"ratio {ratio:g}"


def _describe(c: dict[str, Any], level: float, unit: str) -> str:
    suffix, name = (" dB", "PSNR") if c["metric"] == "psnr_db" else ("", "SSIM")
    net, base = c["network"], c["baseline"]
    digits = 2 if c["metric"] == "psnr_db" else 3
    ci = (
        f" ({level:.0%} CI of the paired difference over {net['n']} images: "
        f"[{net['ci_low']:.{digits}f}, {net['ci_high']:.{digits}f}]{suffix})"
        if net["n"] >= 2
        else " (1 image)"
    )
    every = (
        f"; every image declines by more than the threshold (the least by "
        f"{-max(net['differences']):.{digits}f}{suffix})"
        if c["every_image"]
        else ""
    )
    return (
        f"from {_where(c['from_ratio'], unit)} (factor {c['from_factor']:g}) to "
        f"{_where(c['to_ratio'], unit)} (factor {c['to_factor']:g}) the network's mean {name} "
        f"changes by {net['mean']:+.{digits}f}{suffix}{ci}{every}, while the baseline's changes "
        f"by {base['mean']:+.{digits}f}{suffix}"
    )


def _unconfirmed(c: dict[str, Any], level: float) -> str:
    """Why a decline beyond the threshold does not make the verdict ``unstable``."""
    if c["baseline_declines"]:
        return (
            "the baseline declines beyond the threshold over the same step, so the decline "
            "cannot be attributed to the network"
        )
    if c["network"]["n"] < 2:
        return (
            "one image gives no confidence interval, so a decline cannot be told from the "
            "variation between images: audit at least 2 images (better 5 or more)"
        )
    return (
        f"the {level:.0%} confidence interval over {c['network']['n']} images includes zero "
        "and not every image declines beyond the threshold, so the decline is not "
        "distinguishable from the variation between images (more images narrow the interval)"
    )
