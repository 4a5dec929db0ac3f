"""The report's files in an audit's folder: ``results.json``, ``figures/*.png``,
``protocol.yaml``, ``certificate.json``, ``report.html`` and ``report.pdf``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.certificates import SignatureBox
from app.certificates.identity import Certificate
from app.report.figures import write_figures
from app.report.html import render_html
from app.report.pdf import write_pdf
from reconstruction.models.formats import sha256_file
from reconstruction.protocols import Protocol
from reconstruction.suite import SuiteResult

__all__ = ["ReportFiles", "write_documents", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote (``pdf`` is ``None`` when no PDF was asked for)."""

    results_json: Path
    html: Path
    pdf: Path | None
    figures: dict[str, Path]
    protocol_yaml: Path | None = None
    certificate_json: Path | None = None
    #: where the approval signature goes in the PDF (None without a PDF)
    approval_box: SignatureBox | None = None


def write_report(
    result: SuiteResult,
    out_dir: Path,
    *,
    pdf: bool = True,
    certificate: Certificate | None = None,
) -> ReportFiles:
    """Write ``results.json``, ``figures/*.png``, ``protocol.yaml``, ``certificate.json``,
    ``report.html`` and (``pdf``) ``report.pdf`` into ``out_dir`` (created when missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(result.tests, result.truth, out_dir / "figures")
    return write_documents(result.to_json(), figures, out_dir, pdf=pdf, certificate=certificate)


def write_documents(
    document: dict[str, Any],
    figures: dict[str, Path],
    out_dir: Path,
    *,
    pdf: bool = True,
    certificate: Certificate | None = None,
) -> ReportFiles:
    """``results.json``, ``protocol.yaml``, ``certificate.json``, ``report.html`` and (``pdf``)
    ``report.pdf`` from a results document and its figures already in ``out_dir`` (also used to
    merge the shards of an audit). ``certificate``: the certificate's identity (default: a new
    id, issued now, no manifest). The PDF is PDF/A-3b with the three JSON/YAML files attached;
    it is not signed."""
    certificate = certificate or Certificate()
    results_json = out_dir / "results.json"
    results_json.write_text(json.dumps(document, indent=2), encoding="utf-8")
    relative = {name: path.relative_to(out_dir).as_posix() for name, path in figures.items()}
    protocol_yaml = Protocol.model_validate(document["protocol_document"]).to_yaml()
    protocol_path = out_dir / "protocol.yaml"
    protocol_path.write_text(protocol_yaml, encoding="utf-8")
    certificate_path = out_dir / "certificate.json"
    identity = certificate.to_json(
        document,
        results_sha256=sha256_file(results_json),
        protocol_yaml_sha256=sha256_file(protocol_path),
    )
    certificate_path.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    html = render_html(document, relative, protocol_yaml, certificate)
    html_path = out_dir / "report.html"
    html_path.write_text(html, encoding="utf-8")
    pdf_path: Path | None = None
    box: SignatureBox | None = None
    if pdf:
        pdf_path = out_dir / "report.pdf"
        box = write_pdf(
            html,
            pdf_path,
            results_json=results_json,
            protocol_yaml=protocol_path,
            certificate_json=certificate_path,
        )
    return ReportFiles(
        results_json=results_json,
        html=html_path,
        pdf=pdf_path,
        figures=figures,
        protocol_yaml=protocol_path,
        certificate_json=certificate_path,
        approval_box=box,
    )
