"""Test 3: more samples -- does the network improve when given more measurements?

Nested sampling patterns around the training one: MRI masks from
:func:`reconstruction.sampling.extend_mask` (subsets and supersets of the manifest's mask with
its density profile, capped at full sampling), CT angle sets from
:func:`reconstruction.sampling.extend_angles` (the training angles kept, more added in the
gaps). Network and baseline are scored (PSNR, SSIM; mean and 95 % CI over images) per ratio.

Verdict (thresholds from the protocol):

* ``unstable`` (decay) -- at some ratio above the training one the network's mean PSNR is
  below its PSNR at the training ratio by more than ``decay_db``;
* ``inconclusive`` (stagnation) -- no decay, but from the training ratio to the largest one the
  network gains less than ``stagnation_fraction`` of what the baseline gains;
* ``stable`` -- improvement: "no instability found within the protocol's budget";
* ``skipped`` -- networks whose input size is tied to the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction import sampling
from reconstruction.instability.common import (
    STABLE_WORDING,
    Subject,
    TestResult,
    baseline_reconstructor,
    mean_ci,
    network_reconstructor,
    scores,
    seeded,
    to_numpy,
)
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from reconstruction.protocols import Protocol

__all__ = ["run_more_samples", "sampling_ladder"]


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
) -> TestResult:
    cfg = protocol.sampling
    assert cfg is not None
    if subject.fixed_size:
        return TestResult(
            "sampling", "skipped", subject.fixed_size_reason or "the network has a fixed input size"
        )
    ladder = sampling_ladder(subject.operator, list(cfg.factors), seeded(protocol.seed, 30))
    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"ratios": [], "network": [], "baseline": []}
    for factor, ratio, op in ladder:
        try:
            f_net = network_reconstructor(subject, op, differentiable=False)
            f_base = baseline_reconstructor(op, protocol.baseline, attack=False)
            y = op.A(truth)
            with torch.no_grad():
                net, base = f_net(y), f_base(y)
        except Exception as exc:
            return TestResult(
                "sampling",
                "skipped",
                f"the network cannot take {ratio:g} sampling (factor {factor:g}): "
                f"{type(exc).__name__}: {exc}"[:400],
            )
        s_net, s_base = scores(net, truth), scores(base, truth)
        rows.append(
            {
                "factor": factor,
                "ratio": ratio,
                "training": factor == 1.0,
                "network": {
                    **s_net,
                    "psnr": mean_ci(s_net["psnr_db"]),
                    "ssim_ci": mean_ci(s_net["ssim"]),
                },
                "baseline": {
                    **s_base,
                    "psnr": mean_ci(s_base["psnr_db"]),
                    "ssim_ci": mean_ci(s_base["ssim"]),
                },
            }
        )
        figures["ratios"].append(ratio)
        figures["network"].append(to_numpy(net[0]))
        figures["baseline"].append(to_numpy(base[0]))
        if progress is not None:
            progress(1)
    th = cfg.thresholds
    train = next(r for r in rows if r["training"])
    t_net = train["network"]["psnr"]["mean"]
    above = [r for r in rows if r["ratio"] > train["ratio"]]
    decays = [r for r in above if r["network"]["psnr"]["mean"] < t_net - th.decay_db]
    numbers: dict[str, Any] = {
        "unit": "angles" if isinstance(subject.operator, ParallelBeamCT) else "fraction of k-space",
        "training_ratio": train["ratio"],
        "ladder": rows,
        "thresholds": th.model_dump(),
    }
    net_curve = [r["network"]["psnr"]["mean"] for r in rows]
    numbers["monotone"] = bool(np.all(np.diff(net_curve) >= -1e-9))
    if decays:
        worst = min(decays, key=lambda r: r["network"]["psnr"]["mean"])
        numbers["pattern"] = "decay"
        return TestResult(
            "sampling",
            "unstable",
            f"with more samples ({worst['ratio']:g} vs the training {train['ratio']:g}) the "
            f"network's mean PSNR falls from {t_net:.2f} to "
            f"{worst['network']['psnr']['mean']:.2f} dB (tolerance {th.decay_db:g} dB), while the "
            f"baseline goes from {train['baseline']['psnr']['mean']:.2f} to "
            f"{worst['baseline']['psnr']['mean']:.2f} dB",
            numbers,
            figures,
        )
    if above:
        top = above[-1]
        net_gain = top["network"]["psnr"]["mean"] - t_net
        base_gain = top["baseline"]["psnr"]["mean"] - train["baseline"]["psnr"]["mean"]
        numbers["network_gain_db"], numbers["baseline_gain_db"] = net_gain, base_gain
        if base_gain > th.decay_db and net_gain < th.stagnation_fraction * base_gain:
            numbers["pattern"] = "stagnation"
            return TestResult(
                "sampling",
                "inconclusive",
                f"stagnation: from the training ratio to {top['ratio']:g} the network gains "
                f"{net_gain:.2f} dB, less than {th.stagnation_fraction:g} of the baseline's "
                f"{base_gain:.2f} dB",
                numbers,
                figures,
            )
    numbers["pattern"] = "monotone" if numbers["monotone"] else "improving"
    return TestResult("sampling", "stable", STABLE_WORDING, numbers, figures)
