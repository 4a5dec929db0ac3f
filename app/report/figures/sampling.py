"""The sampling test's figures: PSNR and SSIM against the sampling ratio, and the
reconstructions of image 0 at each ratio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from app.report.figures.common import (
    NETWORK_COLOUR,
    ROLE_COLOURS,
    Window,
    blank,
    db,
    new_figure,
    save,
    show,
)
from app.report.titles import ROLES
from reconstruction.instability.numbers import Interval, LadderRow, LadderScores, Outcome, Sampling

__all__ = ["write"]

#: the curves' panels: the metric (as comparisons name it), its per-ratio interval, its
#: per-image values, the axis label
_METRICS: tuple[
    tuple[str, Callable[[LadderScores], Interval], Callable[[LadderScores], list[float]], str],
    ...,
] = (
    ("psnr_db", lambda s: s.psnr, lambda s: s.psnr_db, "PSNR (dB)"),
    ("ssim", lambda s: s.ssim_ci, lambda s: s.ssim, "SSIM"),
)


# --------------------------------------------------------------------------------------------
# what the figures read: the test's numbers (:class:`Sampling`: a :class:`LadderRow` per
# ratio, with per role an interval and per-image values per metric, :data:`_METRICS`; the unit,
# the training ratio, the decline cited and the thresholds); the figure arrays ``ratios`` and a
# reconstruction per ratio and role


def _ci_band(
    rows: list[LadderRow], role: str, interval: Callable[[LadderScores], Interval]
) -> tuple[np.ndarray, ...]:
    """Mean, lower and upper end of a role's confidence interval per ratio."""
    values = [interval(row.role(role)) for row in rows]
    return (
        np.asarray([v.mean for v in values], float),
        np.asarray([v.ci_low for v in values], float),
        np.asarray([v.ci_high for v in values], float),
    )


def _per_image(
    rows: list[LadderRow], role: str, values: Callable[[LadderScores], list[float]]
) -> np.ndarray:
    """A role's per-image values, ``[ratios, images]``."""
    return np.asarray([values(row.role(role)) for row in rows], dtype=float)


# --------------------------------------------------------------------------------------------
# the figures


def _curves(numbers: Sampling) -> Figure:
    rows = numbers.ladder
    ratios = np.asarray([row.ratio for row in rows], dtype=float)
    unit = numbers.unit
    fig = new_figure(6.8, 2.9)
    axes = fig.subplots(1, 2)
    for ax, (metric, interval, per_image, label) in zip(axes, _METRICS, strict=True):
        # the axes fit the per-image values: with few images a t interval is far wider than
        # the data, and would hide the curves (its band is then clipped at the axes)
        values = np.asarray([per_image(row.role(r)) for row in rows for r in ROLES], dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            pad = 0.08 * max(float(finite.max() - finite.min()), 1e-3)
            ax.set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
        for role in ROLES:
            colour = ROLE_COLOURS[role]
            mean, low, high = _ci_band(rows, role, interval)
            ax.plot(ratios, mean, "o-", color=colour, label=role)
            ax.fill_between(ratios, low, high, color=colour, alpha=0.18, linewidth=0)
            # one thin line per image: the paired curves the verdict compares
            ax.plot(
                ratios,
                _per_image(rows, role, per_image),
                "-",
                color=colour,
                alpha=0.45,
                linewidth=0.6,
            )
        decline = numbers.decline
        if decline is not None and decline.metric == metric:
            # the cited decline: from the smaller ratio's mean to the larger one's
            change = float(decline.network.mean)
            means = _ci_band(rows, "network", interval)[0]
            at = [float(row.ratio) for row in rows].index(float(decline.from_ratio))
            ax.annotate(
                f"{change:+.2f}",
                xy=(float(decline.to_ratio), means[at] + change),
                xytext=(float(decline.from_ratio), means[at]),
                arrowprops={"arrowstyle": "->", "color": NETWORK_COLOUR, "linewidth": 0.8},
                fontsize=6,
                color=NETWORK_COLOUR,
            )
        train = float(numbers.training_ratio)
        ax.axvline(train, color="0.3", linestyle=":", linewidth=1)
        ax.annotate(
            f"training ({train:.3g})",
            (train, 0.02),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            ha="right",
            va="bottom",
            xytext=(-2, 0),
            textcoords="offset points",
        )
        ax.set_xlabel(
            "number of angles" if unit == "angles" else "sampling ratio (" + unit + ")", fontsize=7
        )
        level = float(numbers.thresholds.confidence)
        ax.set_ylabel(f"{label} (mean, {level:.0%} CI)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def _images(numbers: Sampling, figs: dict[str, Any], truth: np.ndarray, window: Window) -> Figure:
    rows = numbers.ladder
    n = len(figs["ratios"])
    fig = new_figure(min(7.4, 1.3 * (n + 1) + 0.4), 3.0)
    axes = np.asarray(fig.subplots(2, n + 1)).reshape(2, n + 1)
    if truth.size:
        show(axes[0, 0], truth, "ground truth\n(image 0)", window)
    else:
        blank(axes[0, 0])
    blank(axes[1, 0])
    for j in range(n):
        row = rows[j] if j < len(rows) else None
        ratio = float(figs["ratios"][j])
        tag = " (training)" if row is not None and row.training else ""
        for i, role in enumerate(ROLES):
            psnr = f"\nPSNR {db(row.role(role).psnr_db[0])}" if row is not None else ""
            show(axes[i, j + 1], figs[role][j], f"{role}, {ratio:.3g}{tag}{psnr}", window)
    fig.suptitle("reconstructions per sampling ratio (image 0)", fontsize=8)
    return fig


def write(
    numbers: Outcome,
    figs: dict[str, Any],
    truth: np.ndarray,
    window: Window,
    figures_dir: Path,
    out: dict[str, Path],
) -> None:
    """``sampling_curves`` when the test has a ladder, and ``sampling_images`` when it has
    reconstructions (``figs["ratios"]``); ``truth``: the run's ground truths
    ``[images, H, W]`` (image 0 is shown)."""
    assert isinstance(numbers, Sampling)
    if not numbers.ladder:
        return
    save(_curves(numbers), figures_dir, "sampling_curves", out)
    if figs.get("ratios"):
        first = truth[0] if truth.ndim == 3 else np.zeros(0)
        save(_images(numbers, figs, first, window), figures_dir, "sampling_images", out)
