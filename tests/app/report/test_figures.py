"""The report's figures (:mod:`app.report.figures`): a PNG per figure, none for a test
without figure data, and a caption for each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from PIL import Image

from app.report import ReportFiles, figure_caption, write_figures
from app.report.figures import FIGURES
from app.report.views import TEST_VIEWS
from reconstruction.figure_data import read_figure_data, write_figure_data
from reconstruction.instability.registry import TESTS
from reconstruction.suite import SuiteResult

FULL_FIGURES = {
    "perturbation_image_curves",
    "perturbation_image_images",
    "perturbation_image_loss",
    "perturbation_measurement_curves",
    "perturbation_measurement_images",
    "perturbation_measurement_loss",
    "perturbation_pnas",
    "perturbation_pnas_zoom",
    "structural_details",
    "sampling_curves",
    "sampling_images",
}


def test_every_figure_is_a_png(report: ReportFiles) -> None:
    assert set(report.figures) == FULL_FIGURES
    for name, path in report.figures.items():
        assert path == report.html.parent / "figures" / f"{name}.png"
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert min(width, height) > 100
    on_disk = {p.stem for p in (report.html.parent / "figures").iterdir()}
    assert on_disk == FULL_FIGURES


def test_write_figures_skips_tests_without_figures(result: SuiteResult, tmp_path: Path) -> None:
    skipped = dataclasses.replace(
        result,
        tests={
            name: dataclasses.replace(test, verdict="skipped", reason="not run", figures={})
            if name != "structural"
            else test
            for name, test in result.tests.items()
        },
    )
    figures = write_figures(skipped.tests, skipped.truth, tmp_path / "figures")
    assert set(figures) == {"structural_details"}


def test_every_figure_has_its_caption(report: ReportFiles) -> None:
    for name in report.figures:
        assert figure_caption(name) != name.replace("_", " "), name
    assert "(image domain)" in figure_caption("perturbation_image_curves")
    assert "(measurement domain)" in figure_caption("perturbation_measurement_loss")


def test_figures_drawn_from_a_jailed_runs_figure_data_are_the_same(
    result: SuiteResult, report: ReportFiles, tmp_path: Path
) -> None:
    """The worker draws the figures from the arrays a jailed run wrote beside results.json:
    written and read back, they give the very same PNGs."""
    write_figure_data(result.truth, result.tests, tmp_path)
    data = read_figure_data(tmp_path)
    document = json.loads(report.results_json.read_text())
    drawn = write_figures(data.test_results(document), data.truth, tmp_path / "figures")
    assert set(drawn) == FULL_FIGURES
    for name, path in drawn.items():
        assert path.read_bytes() == report.figures[name].read_bytes(), name


def test_every_registered_test_has_its_figures_and_its_view() -> None:
    assert set(FIGURES) == set(TESTS)
    assert set(TEST_VIEWS) == set(TESTS)
