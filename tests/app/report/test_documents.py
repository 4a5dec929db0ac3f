"""The report's files (:mod:`app.report.documents`): results.json as the suite wrote it, and a
run with skipped tests."""

from __future__ import annotations

import json

from app.report import ReportFiles
from reconstruction.suite import SuiteResult
from tests.app.report.runs import page_text


def test_results_json_is_the_suite_document(result: SuiteResult, report: ReportFiles) -> None:
    assert report.results_json == report.html.parent / "results.json"
    text = report.results_json.read_text(encoding="utf-8")
    assert text == json.dumps(result.to_json(), indent=2)
    document = json.loads(text)
    assert document == json.loads(json.dumps(result.to_json()))
    assert document["schema"] == "recon-audit/results/v1"


def test_skipped_tests_render_their_reason_and_no_figure(
    skipping: tuple[SuiteResult, ReportFiles],
) -> None:
    result, files = skipping
    assert files.pdf is None
    assert result.tests["sampling"].verdict == "skipped"
    assert result.tests["perturbation"].verdict == "skipped"
    assert not any(name.startswith(("sampling", "perturbation")) for name in files.figures)
    figures_dir = files.html.parent / "figures"
    assert not [p for p in figures_dir.iterdir() if p.name.startswith(("sampling", "perturbation"))]
    raw = files.html.read_text(encoding="utf-8")
    text = page_text(files.html)
    assert raw.count('<span class="badge skipped">skipped</span>') >= 4  # cover + sections
    section = text[text.index("More samples</h2>") :]
    assert result.tests["sampling"].reason in section[:2000]
    assert "sampling_" not in raw
