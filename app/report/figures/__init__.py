"""The report's figures: PNGs drawn by matplotlib (``Figure`` objects on the Agg canvas, no
pyplot state; a fixed dpi; one intensity window for every image of a run), one module per test
(:mod:`.perturbation`, :mod:`.structural`, :mod:`.sampling`) on what they share
(:mod:`.common`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from app.report.figures import perturbation, sampling, structural
from app.report.figures.common import FIGURE_DPI, Window, window
from reconstruction.instability.common import TestResult
from reconstruction.instability.numbers import Outcome
from reconstruction.instability.registry import REGISTRY

__all__ = ["FIGURES", "FIGURE_DPI", "write_figures"]


def write_figures(
    tests: Mapping[str, TestResult], truth: np.ndarray, figures_dir: Path
) -> dict[str, Path]:
    """Write the report's figures of ``tests`` (their numbers and figure arrays: a
    :class:`~reconstruction.suite.SuiteResult`'s, or read back from a jailed run's figure data,
    :mod:`reconstruction.figure_data`) as PNGs into ``figures_dir``; name -> path, in report
    order. ``truth``: the prepared ground truths ``[B, H, W]``.

    Names: ``perturbation_{threat}_curves``, ``perturbation_{threat}_images``,
    ``perturbation_{threat}_loss`` (per threat model run), ``perturbation_pnas`` and
    ``perturbation_pnas_zoom`` (the paper's search), ``structural_details``,
    ``sampling_curves``, ``sampling_images``. Skipped tests (and tests without figure data)
    produce none."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    shown = window(tests, truth)
    out: dict[str, Path] = {}
    for entry in REGISTRY:  # the report's order
        test = tests.get(entry.name)
        if test is not None and test.verdict != "skipped":
            numbers = entry.block.validate_python(test.as_dict())
            FIGURES[entry.name](numbers, test.figures, np.asarray(truth), shown, figures_dir, out)
    return out


#: what draws a test's figures: ``(numbers, figure arrays, truths, window, folder, written)``;
#: ``numbers``: the test's block of results.json as its registry model
Draw = Callable[[Outcome, dict[str, Any], np.ndarray, Window, Path, dict[str, Path]], None]
#: each test's figures, by the registry's names
FIGURES: dict[str, Draw] = {
    "perturbation": perturbation.write,
    "structural": structural.write,
    "sampling": sampling.write,
}
