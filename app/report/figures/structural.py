"""The structural test's figure: each detail's crops (truth, network, baseline), the detail
boxed, the missed ones first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.report.figures.common import Window, new_figure, outline, save, show
from app.report.titles import ROLES
from reconstruction.instability.numbers import DetailRow, Outcome, Structural

__all__ = ["write"]

#: the colour of the box marking a detail on its crops
DETAIL_BOX_COLOUR = "#ffd54f"


# --------------------------------------------------------------------------------------------
# what the figure reads: a panel per detail from the test's figure arrays (``image``, ``name``,
# ``contrast``, ``box`` and a crop per role and of the ``truth``), and the detail's
# :class:`DetailRow` in the test's numbers (``missed``, and per role ``contrast_recovery`` and
# ``visible``)


def _image(panel: dict[str, Any]) -> int:
    image: int = panel.get("image", 0)
    return image


def _detail_row(numbers: Structural, panel: dict[str, Any]) -> DetailRow | None:
    """The panel's detail in the numbers (same image, name and placed contrast)."""
    for row in numbers.details:
        if (
            row.image == _image(panel)
            and row.name == panel["name"]
            and row.placed_contrast == panel["contrast"]
        ):
            return row
    return None


# --------------------------------------------------------------------------------------------
# the figure


def _boxed(ax: Axes, panel: dict[str, Any]) -> None:
    """Outline the panel's detail (``box``: crop coordinates) when it has one."""
    box = panel.get("box")
    if box is not None:
        outline(ax, box, DETAIL_BOX_COLOUR, linewidth=0.8)


def _details(numbers: Structural, panels: Sequence[dict[str, Any]], window: Window) -> Figure:
    """Rows = details, columns = truth / network / baseline crops, the detail boxed on each;
    more than four details are laid out in two groups side by side (so twelve still fit a
    page). Missed details come first."""
    groups = 1 if len(panels) <= 4 else 2
    rows = math.ceil(len(panels) / groups)
    fig = new_figure(3.6 * groups + 1.0, 1.45 * rows + 0.3)
    axes = np.asarray(fig.subplots(rows, 3 * groups)).reshape(rows, 3 * groups)
    for ax in axes.flat:
        ax.set_axis_off()
    for index, panel in enumerate(panels):
        i, c0 = index % rows, 3 * (index // rows)
        row = _detail_row(numbers, panel)
        missed = " (MISSED)" if row is not None and row.missed else ""
        label = (
            f"image {_image(panel)}: {panel['name']}{missed}\ncontrast {float(panel['contrast']):g}"
        )
        axes[i, c0].set_axis_on()
        show(axes[i, c0], panel["truth"], label, window)
        _boxed(axes[i, c0], panel)
        for j, role in enumerate(ROLES, start=1):
            if row is None:
                title = role
            else:
                score = row.role(role)
                seen = "visible" if score.visible else "not visible"
                title = f"{role}: recovery {score.contrast_recovery:.2f}\n({seen})"
            axes[i, c0 + j].set_axis_on()
            show(axes[i, c0 + j], panel[role], title, window)
            _boxed(axes[i, c0 + j], panel)
    fig.suptitle("details (crops; box: the detail; missed details first)", fontsize=8)
    return fig


def write(
    numbers: Outcome,
    figs: dict[str, Any],
    _truth: np.ndarray,
    window: Window,
    figures_dir: Path,
    out: dict[str, Path],
) -> None:
    """``structural_details``, when the test has detail panels (``figs["panels"]``)."""
    assert isinstance(numbers, Structural)
    panels = figs.get("panels") or []
    if panels:
        save(_details(numbers, panels, window), figures_dir, "structural_details", out)
