"""The report's figures: PNGs drawn by matplotlib (``Figure`` objects on the Agg canvas, no
pyplot state; a fixed dpi; one intensity window for every image of a run), one module per test
(:mod:`.perturbation`, :mod:`.structural`, :mod:`.sampling`) on what they share
(:mod:`.common`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.report.figures import perturbation, sampling, structural
from app.report.figures.common import FIGURE_DPI, window
from reconstruction.suite import SuiteResult

__all__ = ["FIGURE_DPI", "write_figures"]


def write_figures(result: SuiteResult, figures_dir: Path) -> dict[str, Path]:
    """Write the report's figures as PNGs into ``figures_dir``; name -> path, in report order.

    Names: ``perturbation_{threat}_curves``, ``perturbation_{threat}_images``,
    ``perturbation_{threat}_loss`` (per threat model run), ``perturbation_pnas`` and
    ``perturbation_pnas_zoom`` (the paper's search), ``structural_details``,
    ``sampling_curves``, ``sampling_images``. Skipped tests (and tests without figure data)
    produce none."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    shown = window(result)
    out: dict[str, Path] = {}
    tests = {name: test for name, test in result.tests.items() if test.verdict != "skipped"}
    if "perturbation" in tests:
        perturbation.write(tests["perturbation"], shown, figures_dir, out)
    if "structural" in tests:
        structural.write(tests["structural"], shown, figures_dir, out)
    if "sampling" in tests:
        sampling.write(tests["sampling"], np.asarray(result.truth), shown, figures_dir, out)
    return out
