"""The report as a PDF (:mod:`app.report.pdf`)."""

from __future__ import annotations

import logging

import pytest

from app.report import ReportFiles


def test_pdf_has_pages_and_loads_the_figures(
    report: ReportFiles, caplog: pytest.LogCaptureFixture
) -> None:
    import weasyprint  # type: ignore[import-untyped]

    assert report.pdf is not None
    assert report.pdf.read_bytes().startswith(b"%PDF")
    out = report.html.parent
    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        document = weasyprint.HTML(filename=str(report.html), base_url=f"{out}/").render()
    assert len(document.pages) >= 2
    # every figure resolved (WeasyPrint logs a warning for each image it cannot load)
    problems = [r.getMessage() for r in caplog.records if r.name.startswith("weasyprint")]
    assert not problems
