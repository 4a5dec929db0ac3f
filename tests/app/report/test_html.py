"""The report as HTML (:mod:`app.report.html`, :mod:`app.report.views`): verdicts, reasons,
identities, escaping, and every section's statistics, for current and older results."""

from __future__ import annotations

import copy
import html
import re

from app.report import ReportFiles, render_html
from reconstruction.instability.common import STABLE_WORDING
from reconstruction.protocols import parse_protocol
from reconstruction.suite import SuiteResult
from tests.app.report.runs import PROTOCOL_SKIPPING, page_text, suite


def test_html_holds_verdicts_reasons_and_identities(
    result: SuiteResult, report: ReportFiles
) -> None:
    raw = report.html.read_text(encoding="utf-8")
    text = page_text(report.html)
    assert "Instability audit report" in text
    for name, test in result.tests.items():
        assert test.verdict != "skipped", name
        assert f'<span class="badge {test.verdict}">{test.verdict}</span>' in raw
        assert test.reason in text
    assert result.protocol.sha256 in text
    assert result.model["sha256"] in text
    assert result.model["mask_sha256"] in text
    assert str(result.environment["recon_audit"]) in text
    for image in result.images:
        assert image["sha256"] in text
    # the full protocol YAML, and the fixed limitation wording
    assert result.protocol.to_yaml() in text
    prose = " ".join(text.split())
    assert STABLE_WORDING in prose
    assert "It is not a proof of stability" in prose
    assert "are weaker evidence than white-box results" in prose
    assert "attacked with the same search and the same budget as the network" in prose
    # every figure is referenced by its path relative to the HTML file
    for name in report.figures:
        assert f'src="figures/{name}.png"' in raw
    # numbers: PSNRs as dB with two decimals
    assert re.search(r">\d+\.\d\d dB<", raw)


def test_html_escapes_names_and_reasons(result: SuiteResult) -> None:
    document = copy.deepcopy(result.to_json())
    document["model"]["name"] = "<script>alert('model')</script>"
    document["tests"]["structural"]["reason"] = "a reason with <script>alert(1)</script>"
    page = render_html(document, {}, "name: <script>\n")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;model&#39;)&lt;/script&gt;" in page
    assert "a reason with &lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_black_box_is_flagged_as_weaker_evidence(result: SuiteResult) -> None:
    document = copy.deepcopy(result.to_json())
    page = " ".join(html.unescape(render_html(document, {}, "")).split())
    assert "Black box: weaker evidence" not in page
    document["model"]["gradient_access"] = "black-box"
    page = " ".join(html.unescape(render_html(document, {}, "")).split())
    assert "Black box: weaker evidence" in page
    assert "results are weaker evidence than a white-box search" in page


def _text(document: dict[str, object]) -> str:
    """The rendered report's text, tags left out, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", render_html(document, {}, ""))).split())


def test_the_certificate_names_the_gradient_route_and_the_masking_checks(
    result: SuiteResult,
) -> None:
    document = copy.deepcopy(result.to_json())
    perturbation = document["tests"]["perturbation"]
    page = _text(document)
    assert "Gradient route exact" in page  # the subject's table
    section = page[page.index("4. Tiny worst-case perturbations") :]
    assert "Gradient route: exact — its search measured to reach 0.95× an independent" in section
    checks = perturbation["gradient_masking"]
    assert f"Cost: {checks['passes']} network passes." in section
    assert "no sign of masking." in section
    table = section[section.index("Gradient masking checks Threat model") :]
    seeds = perturbation["threat_models"]["image"]["masking"]["seeds"]
    assert ", ".join(str(s) for s in seeds) in table
    # a quantized network's route, its gradients masked
    document["model"]["gradient_route"] = "straight-through surrogate"
    perturbation["gradient_route"] = "straight-through surrogate"
    perturbation["strength"] = dict(perturbation["strength"], measured=None, shown=False)
    perturbation["gradient_masking"] = dict(
        checks, masked=True, signs=["the search does not grow with the radius (<b>)"]
    )
    page = _text(document)
    assert "Gradient route straight-through surrogate The search's gradient is not" in page
    section = page[page.index("4. Tiny worst-case perturbations") :]
    assert "Gradient route: straight-through surrogate — its strength is not shown" in section
    assert "gradients look masked — the search does not grow with the radius (<b>)" in section
    # results written before routes and masking checks: from the gradient access, no checks
    for key in ("gradient_route", "strength", "gradient_masking", "masking"):
        perturbation.pop(key)
    del document["model"]["gradient_route"]
    for block in perturbation["threat_models"].values():
        block.pop("masking")
        for row in block["results"]:
            row.pop("masking")
    page = _text(document)
    assert "Gradient route: exact" in page
    assert "Gradient masking checks" not in page


def test_structural_and_sampling_sections_show_the_statistics(
    result: SuiteResult, report: ReportFiles
) -> None:
    prose = " ".join(page_text(report.html).split())
    structural = prose[prose.index("Small structural changes</h2>") :]
    assert "By size and contrast" in structural
    assert "Smallest height recovered at contrast 0.3" in structural
    assert "paired confidence interval above zero" in structural
    sampling = prose[prose.index("More samples</h2>") :]
    assert "Per image: network PSNR" in sampling
    assert "between any two ratios" in sampling
    # every crop of the structural figure carries the detail's box
    assert all(len(panel["box"]) == 4 for panel in result.tests["structural"].figures["panels"])


def test_the_cited_decline_is_rendered_and_v1_results_without_it_still_render(
    result: SuiteResult,
) -> None:
    document = copy.deepcopy(result.to_json())
    sampling = document["tests"]["sampling"]
    comparison = dict(sampling["comparisons"][0], beyond_threshold=True, significant=True)
    comparison["network"] = dict(comparison["network"], mean=-1.75, ci_low=-2.5, ci_high=-1.0)
    sampling["largest_decline"] = {"psnr_db": comparison, "ssim": None}
    page = " ".join(html.unescape(render_html(document, {}, "")).split())
    section = page[page.index("Largest decline of the network") :]
    assert "-1.75 [-2.5, -1]" in section
    assert "PSNR (dB)" in section
    # a results.json of the first v1 layout: none of the additive fields
    for key in ("comparisons", "largest_decline", "decline", "n_images"):
        sampling.pop(key, None)
    for key in ("classes", "paired", "smallest_recovered_px"):
        document["tests"]["structural"].pop(key, None)
    page = " ".join(html.unescape(render_html(document, {}, "")).split())
    assert "Largest decline of the network" not in page
    assert "By size and contrast" not in page
    assert result.tests["sampling"].reason in page


def _page_texts(page: str) -> list[str]:
    """Each page's text, its margin boxes (the running footer) included."""
    import weasyprint  # type: ignore[import-untyped]

    def texts(box: object) -> list[str]:
        found = [box.text] if isinstance(getattr(box, "text", None), str) else []  # type: ignore[attr-defined]
        for child in getattr(box, "children", []):
            found += texts(child)
        return found

    document = weasyprint.HTML(string=page).render()
    return [" ".join(" ".join(texts(p._page_box)).split()) for p in document.pages]


def test_a_protocol_posing_as_a_builtin_reads_custom_on_every_page() -> None:
    spoofed = PROTOCOL_SKIPPING.replace("name: report-test-skipping", "name: standard")
    document = suite(spoofed).to_json()
    assert document["protocol"]["name"] == "custom:standard"
    assert document["protocol"]["builtin"] is False
    assert document["protocol_document"]["name"] == "standard"  # the text as submitted
    pages = _page_texts(render_html(document, {}, parse_protocol(spoofed).to_yaml()))
    assert len(pages) >= 3
    for number, text in enumerate(pages, 1):
        assert "custom:standard v1" in text, f"page {number}"
        assert not re.search(r"(?<!custom:)standard v1", text), f"page {number}"
    assert "takes the name of the built-in protocol standard but is not it" in " ".join(pages)


def test_the_metric_convention_measurements_and_coil_maps_are_stated(
    result: SuiteResult,
) -> None:
    def _plain(page: str) -> str:
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())

    document = copy.deepcopy(result.to_json())
    page = _plain(render_html(document, {}, ""))
    assert "Metric convention: recon-audit — PSNR with peak = each reference image's" in page
    assert "Measurements: simulated from the images" in page
    document["metric_convention"] = {"name": "fastmri", "description": "fastMRI's (evaluate.py)"}
    document["measurements"] = "measured"
    document["sensitivities"] = {
        "source": "espirit",
        "coils": 4,
        "sha256": "ab" * 32,
        "implementation": "sigpy.mri.app.EspiritCalib",
        "sigpy": "0.1.27",
        "calib_width": 24,
        "kernel_width": 6,
        "thresh": 0.02,
        "crop": 0.95,
        "max_iter": 100,
        "slice": "knee.h5#slice=3",
    }
    page = _plain(render_html(document, {}, ""))
    assert "Metric convention: fastmri — fastMRI's (evaluate.py)" in page
    assert "Measurements: measured k-space" in page
    assert "Coil sensitivity maps (4 coils)" in page
    assert "espirit (estimated by sigpy.mri.app.EspiritCalib, SigPy 0.1.27" in page
    assert "region of knee.h5#slice=3: calibration width 24" in page
    # results written before conventions were named: the project's, which they used
    for key in ("metric_convention", "measurements", "sensitivities"):
        document.pop(key)
    page = _plain(render_html(document, {}, ""))
    assert "Metric convention: recon-audit" in page
