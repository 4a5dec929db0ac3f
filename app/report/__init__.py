"""Audit reports: results.json, PNG figures, an HTML report and its PDF (WeasyPrint).

:func:`write_report` renders a :class:`~reconstruction.suite.SuiteResult`:

* ``results.json`` -- ``result.to_json()`` (schema ``recon-audit/results/v1``);
* ``figures/*.png`` -- :func:`write_figures` (:mod:`app.report.figures`: matplotlib, one
  module per test; one intensity window for every image of a run);
* ``report.html`` -- :func:`render_html` (:mod:`app.report.html`) from
  ``templates/report.html.j2`` (Jinja2, autoescaped), which needs only the results.json
  document, the figure paths and the protocol's YAML, read through the view models of
  :mod:`app.report.views` (titles in :mod:`app.report.titles`, captions in
  :mod:`app.report.captions`);
* ``report.pdf`` -- the same HTML through WeasyPrint (:mod:`app.report.pdf`: A4, no network
  access).

The report is a certificate: :class:`~app.certificates.identity.Certificate` (its id, issue
time, service version and git revision, the submitted manifest) is printed on the cover and
written as ``certificate.json``; ``protocol.yaml`` is the protocol's full YAML. The PDF is
PDF/A-3b with ``results.json``, ``protocol.yaml`` and ``certificate.json`` embedded as
associated files (``/AF``), and it keeps an empty box on the cover for the auditor's approval
signature (:attr:`ReportFiles.approval_box`). Signing comes after
(``app.certificates.signing``): the renderer never signs. :mod:`app.report.documents` writes
the files.
"""

from __future__ import annotations

from app.report.captions import figure_caption
from app.report.documents import ReportFiles, write_documents, write_report
from app.report.figures import FIGURE_DPI, write_figures
from app.report.html import TEMPLATES, render_html
from app.report.pdf import PDF_VARIANT

__all__ = [
    "FIGURE_DPI",
    "PDF_VARIANT",
    "TEMPLATES",
    "ReportFiles",
    "figure_caption",
    "render_html",
    "write_documents",
    "write_figures",
    "write_report",
]
