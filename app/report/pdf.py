"""The report as a PDF/A-3b (WeasyPrint: A4, no network access) with ``results.json``,
``protocol.yaml`` and ``certificate.json`` embedded as associated files (``/AF``), and where on
it the approval signature's box was laid out. The PDF is not signed here
(:mod:`app.certificates.signing` signs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.certificates import CERTIFICATE_SCHEMA, SignatureBox
from app.report.html import APPROVAL_ANCHOR, APPROVAL_BOX_MM

__all__ = ["PDF_VARIANT", "write_pdf"]

PDF_VARIANT = "pdf/a-3b"
#: CSS px -> PDF points (WeasyPrint draws 1 CSS px as 0.75 pt)
PT_PER_PX = 0.75


def _unique_af(_document: Any, pdf: Any) -> None:
    """WeasyPrint 69 lists each attachment twice in the catalog's ``/AF`` (PDF/A-3 associated
    files): once from the embedded-files name tree, once from the file specifications."""
    if "AF" in pdf.catalog:
        seen = list(dict.fromkeys(pdf.catalog["AF"]))
        pdf.catalog["AF"].clear()
        pdf.catalog["AF"].extend(seen)


def _approval_box(document: Any) -> SignatureBox | None:
    """The approval box's rectangle in PDF points, from WeasyPrint's laid-out pages (anchors
    are the top-left corners of elements with an ``id``, in CSS px from the page's top left;
    the box's size is fixed by :data:`~app.report.html.APPROVAL_BOX_MM`)."""
    width, height = (mm / 25.4 * 72 for mm in APPROVAL_BOX_MM)
    for index, page in enumerate(document.pages):
        anchor = page.anchors.get(APPROVAL_ANCHOR)
        if anchor is None:
            continue
        x, top = anchor[0] * PT_PER_PX, (page.height - anchor[1]) * PT_PER_PX
        return SignatureBox(index, (round(x), round(top - height), round(x + width), round(top)))
    return None


def write_pdf(
    html: str,
    pdf_path: Path,
    *,
    results_json: Path,
    protocol_yaml: Path,
    certificate_json: Path,
) -> SignatureBox | None:
    """Render ``html`` (its figures' paths relative to ``pdf_path``'s folder) to ``pdf_path``
    with the three files attached; the approval box's place (``None`` when the HTML has no
    certificate)."""
    from weasyprint import HTML, Attachment  # type: ignore[import-untyped]

    # base_url: the report's folder (trailing separator), so figures/x.png resolves there
    rendered = HTML(string=html, base_url=str(pdf_path.parent.resolve()) + "/").render(
        pdf_variant=PDF_VARIANT
    )
    box = _approval_box(rendered)
    attachments = [
        Attachment(
            filename=str(results_json),
            name="results.json",
            description="The audit's results (recon-audit/results/v1)",
            relationship="Data",
        ),
        Attachment(
            filename=str(protocol_yaml),
            name="protocol.yaml",
            description="The audit protocol, every value filled in",
            relationship="Source",
        ),
        Attachment(
            filename=str(certificate_json),
            name="certificate.json",
            description=f"The certificate's identity ({CERTIFICATE_SCHEMA})",
            relationship="Data",
        ),
    ]
    rendered.write_pdf(
        pdf_path, pdf_variant=PDF_VARIANT, attachments=attachments, finisher=_unique_af
    )
    return box
