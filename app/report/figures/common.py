"""What every figure shares: the canvas (matplotlib ``Figure`` objects on the Agg canvas, no
pyplot state, a fixed dpi), the colours, one intensity window for every image of a run, and the
panels' helpers (an image, a blank panel, an outlined box)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from reconstruction.data import magnitude
from reconstruction.instability.common import TestResult

__all__ = [
    "BASELINE_COLOUR",
    "DIFF_CMAP",
    "FIGURE_DPI",
    "NETWORK_COLOUR",
    "ROLE_COLOURS",
    "Window",
    "blank",
    "db",
    "new_figure",
    "outline",
    "save",
    "show",
    "window",
]

FIGURE_DPI = 120
#: the figures' colours: network, baseline (colour-blind safe pair)
NETWORK_COLOUR, BASELINE_COLOUR = "#d55e00", "#0072b2"
#: role -> colour, in :data:`~app.report.titles.ROLES` order
ROLE_COLOURS = {"network": NETWORK_COLOUR, "baseline": BASELINE_COLOUR}
DIFF_CMAP = "inferno"
#: an intensity window ``(lo, hi)``
Window = tuple[float, float]


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def save(fig: Figure, figures_dir: Path, name: str, out: dict[str, Path]) -> None:
    """Write ``fig`` as ``figures_dir/name.png`` and record it in ``out``."""
    path = figures_dir / f"{name}.png"
    # no Software key: the bytes depend only on the data and the matplotlib version's drawing
    fig.savefig(path, dpi=FIGURE_DPI, format="png", metadata={"Software": None})
    out[name] = path


def window(tests: Mapping[str, TestResult], truth: np.ndarray) -> Window:
    """The intensity window of every image: the prepared ground truths' range (the truths are
    scaled to the manifest's intensity range, so this is that range)."""
    truth = np.asarray(truth)
    perturbation = tests.get("perturbation")
    if truth.size == 0 and perturbation is not None:
        truth = np.asarray(perturbation.figures.get("truth", np.zeros(0)))
    if truth.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.min(truth)), float(np.max(truth))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def show(ax: Axes, image: Any, title: str, window: Window, cmap: str = "gray") -> AxesImage:
    """``image`` (its magnitude when complex) in ``window``, titled, without ticks."""
    shown = ax.imshow(
        magnitude(image), cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest"
    )
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def blank(ax: Axes, text: str = "") -> None:
    """An empty panel, with ``text`` in its middle when given."""
    ax.set_axis_off()
    if text:
        ax.text(
            0.5, 0.5, text, ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes
        )


def outline(ax: Axes, box: Any, colour: str, linewidth: float = 1.0) -> None:
    """Outline the pixels ``[row0, col0, row1, col1]`` (``row1``, ``col1`` excluded) on ``ax``."""
    r0, c0, r1, c1 = (int(v) for v in box)
    ax.add_patch(
        Rectangle(
            (c0 - 0.5, r0 - 0.5),
            c1 - c0,
            r1 - r0,
            fill=False,
            edgecolor=colour,
            linewidth=linewidth,
        )
    )


def db(value: float) -> str:
    """A PSNR in a figure's title."""
    return f"{value:.2f} dB" if math.isfinite(value) else "inf dB"
