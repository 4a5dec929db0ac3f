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
from reconstruction.instability.common import TestResult

__all__ = ["write"]

#: the colour of the box marking a detail on its crops
DETAIL_BOX_COLOUR = "#ffd54f"


# --------------------------------------------------------------------------------------------
# what the figure reads: a panel per detail from the test's figure arrays (``image``, ``name``,
# ``contrast``, ``box`` and a crop per role and of the ``truth``), and the detail's row of the
# test's ``details`` numbers (``missed``, and per role ``contrast_recovery`` and ``visible``)


def _image(panel: dict[str, Any]) -> int:
    image: int = panel.get("image", 0)
    return image


def _detail_row(numbers: dict[str, Any], panel: dict[str, Any]) -> dict[str, Any] | None:
    """The panel's detail in ``numbers["details"]`` (same image, name and contrast: the class
    contrast when the row has one)."""
    for row in numbers.get("details", []):
        if (
            row["image"] == _image(panel)
            and row["name"] == panel["name"]
            and row.get("class_contrast", row["contrast"]) == panel["contrast"]
        ):
            found: dict[str, Any] = row
            return found
    return None


# --------------------------------------------------------------------------------------------
# the figure


def _boxed(ax: Axes, panel: dict[str, Any]) -> None:
    """Outline the panel's detail (``box``: crop coordinates) when it has one."""
    box = panel.get("box")
    if box is not None:
        outline(ax, box, DETAIL_BOX_COLOUR, linewidth=0.8)


def _details(numbers: dict[str, Any], panels: Sequence[dict[str, Any]], window: Window) -> Figure:
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
        missed = " (MISSED)" if row is not None and row.get("missed") else ""
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
                score = row[role]
                seen = "visible" if score["visible"] else "not visible"
                title = f"{role}: recovery {score['contrast_recovery']:.2f}\n({seen})"
            axes[i, c0 + j].set_axis_on()
            show(axes[i, c0 + j], panel[role], title, window)
            _boxed(axes[i, c0 + j], panel)
    fig.suptitle("details (crops; box: the detail; missed details first)", fontsize=8)
    return fig


def write(test: TestResult, window: Window, figures_dir: Path, out: dict[str, Path]) -> None:
    """``structural_details``, when the test has detail panels."""
    panels = test.figures.get("panels") or []
    if panels:
        save(_details(test.numbers, panels, window), figures_dir, "structural_details", out)
