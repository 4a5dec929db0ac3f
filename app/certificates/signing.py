"""PAdES signatures on the certificates (pyHanko).

* :func:`sign_certificate` -- the service's signature, the last step after rendering: a
  certification signature (DocMDP: only form filling and signatures may follow) in the
  invisible field ``Issuance``, name "recon-audit service", reason (meaning) "issued", SHA-256,
  ``ETSI.CAdES.detached``; the same revision adds the empty, visible ``Approval`` field over the
  box the report keeps on its cover.
* :func:`approve_certificate` -- an auditor's approval: a second signature, added as an
  incremental update (the issued revision stays as it was) into ``Approval``, name = the
  auditor, reason (meaning) "approved"; its visible appearance prints the name, the date and
  time (UTC), the meaning and the comment, rendered by WeasyPrint (embedded fonts, as PDF/A
  wants).

With ``timestamp_url`` configured each signature carries an RFC 3161 timestamp (PAdES B-T),
else none (B-B). Both return the new file's bytes.
"""

from __future__ import annotations

import html
import tempfile
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.layout import AxisAlignment, Margins, SimpleBoxLayoutRule
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.fields import MDPPerm, SigFieldSpec, SigSeedSubFilter
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper
from pyhanko.stamp import StaticStampStyle

from app.certificates import (
    APPROVAL_FIELD,
    ISSUANCE_FIELD,
    ISSUER,
    MEANING_APPROVED,
    MEANING_ISSUED,
    SignatureBox,
)
from app.certificates.pki import ServiceSigner
from app.errors import AppError, Conflict, Invalid

__all__ = ["SigningError", "approve_certificate", "sign_certificate"]

MD_ALGORITHM = "sha256"
#: the longest comment printed in the approval's box (the full one is in the database)
STAMP_COMMENT_CHARS = 100


class SigningError(AppError):
    status_code = 500


def _timestamper(signer: ServiceSigner) -> TimeStamper | None:
    return HTTPTimeStamper(signer.timestamp_url) if signer.timestamp_url else None


def _writer(pdf: bytes) -> IncrementalPdfFileWriter:
    try:
        return IncrementalPdfFileWriter(BytesIO(pdf), strict=False)
    except Exception as exc:  # pyHanko raises several kinds on a damaged file
        raise Invalid(f"not a readable PDF: {exc}") from exc


def sign_certificate(
    pdf: bytes, signer: ServiceSigner, *, approval_box: SignatureBox | None = None
) -> bytes:
    """The service's certification signature (see the module); ``approval_box``: where the
    report keeps the approval's box (None: the approval will be invisible)."""
    writer = _writer(pdf)
    if approval_box is not None:
        fields.append_signature_field(
            writer,
            SigFieldSpec(
                APPROVAL_FIELD,
                on_page=approval_box.page,
                box=approval_box.rect,
                empty_field_appearance=True,
            ),
        )
    meta = signers.PdfSignatureMetadata(
        field_name=ISSUANCE_FIELD,
        name=ISSUER,
        reason=MEANING_ISSUED,
        subfilter=SigSeedSubFilter.PADES,
        md_algorithm=MD_ALGORITHM,
        certify=True,
        docmdp_permissions=MDPPerm.FILL_FORMS,
    )
    pdf_signer = signers.PdfSigner(
        meta,
        signer.signer,
        timestamper=_timestamper(signer),
        new_field_spec=SigFieldSpec(ISSUANCE_FIELD),
    )
    try:
        out = pdf_signer.sign_pdf(writer)
    except Exception as exc:
        raise SigningError(f"signing the certificate failed: {exc}") from exc
    data: bytes = out.getvalue()
    return data


def _approval_field(pdf: bytes) -> tuple[bool, tuple[float, float] | None]:
    """Whether the ``Approval`` field exists, and its box's size (None: invisible)."""
    reader = PdfFileReader(BytesIO(pdf), strict=False)
    for name, value, field_ref in fields.enumerate_sig_fields(reader):
        if name != APPROVAL_FIELD:
            continue
        if value is not None:
            raise Conflict("the certificate already carries an approval signature")
        field = field_ref.get_object()
        widget = field["/Kids"][0].get_object() if "/Kids" in field else field
        x1, y1, x2, y2 = (float(v) for v in widget.get("/Rect", [0, 0, 0, 0]))
        size = (abs(x2 - x1), abs(y2 - y1))
        return True, size if size[0] > 1 and size[1] > 1 else None
    return False, None


def _appearance(
    folder: Path, size: tuple[float, float], approver: str, at: datetime, comment: str
) -> Path:
    """A PDF page of exactly the box's size holding the approval's printed name, date and time
    (UTC) and meaning (WeasyPrint: fonts embedded). Only its first page is used, so a comment
    too long for the box is cut at a line."""
    from weasyprint import HTML  # type: ignore[import-untyped]

    if len(comment) > STAMP_COMMENT_CHARS:
        comment = comment[: STAMP_COMMENT_CHARS - 1] + "\u2026"
    width, height = size
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><style>
@page {{ size: {width}pt {height}pt; margin: 4pt 6pt; }}
html {{ font-family: "DejaVu Sans", sans-serif; font-size: 7.5pt; line-height: 1.3; }}
p {{ margin: 0; }} .name {{ font-size: 9.5pt; font-weight: bold; }}
.comment {{ color: #333; }}
</style></head><body>
<p>Approved by <span class="name">{html.escape(approver)}</span></p>
<p>Meaning: <strong>{MEANING_APPROVED}</strong> (signature &ldquo;{APPROVAL_FIELD}&rdquo;)</p>
<p>Date and time (UTC): {at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")}</p>
{f'<p class="comment">Comment: {html.escape(comment)}</p>' if comment else ""}
</body></html>"""
    path = folder / "approval.pdf"
    HTML(string=page).write_pdf(path)
    return path


def approve_certificate(
    pdf: bytes, signer: ServiceSigner, *, approver: str, comment: str = "", at: datetime
) -> bytes:
    """Add the approval signature of ``approver`` (printed name) as an incremental update;
    :class:`~app.errors.Conflict` when the file already has one. ``at``: the time printed in
    the box (UTC; the signature's own time is taken a moment later)."""
    exists, size = _approval_field(pdf)
    writer = _writer(pdf)
    meta = signers.PdfSignatureMetadata(
        field_name=APPROVAL_FIELD,
        name=approver,
        reason=MEANING_APPROVED,
        subfilter=SigSeedSubFilter.PADES,
        md_algorithm=MD_ALGORITHM,
    )
    with tempfile.TemporaryDirectory(prefix="approval-") as scratch:
        style = None
        if size is not None:
            look = _appearance(Path(scratch), size, approver, at, comment)
            style = StaticStampStyle.from_pdf_file(
                str(look),
                border_width=0,
                background_layout=SimpleBoxLayoutRule(
                    x_align=AxisAlignment.ALIGN_MIN,
                    y_align=AxisAlignment.ALIGN_MAX,
                    margins=Margins(0, 0, 0, 0),
                ),
            )
        pdf_signer = signers.PdfSigner(
            meta,
            signer.signer,
            timestamper=_timestamper(signer),
            stamp_style=style,
            new_field_spec=None if exists else SigFieldSpec(APPROVAL_FIELD),
        )
        try:
            out = pdf_signer.sign_pdf(writer)
        except Exception as exc:
            raise SigningError(f"adding the approval signature failed: {exc}") from exc
    data: bytes = out.getvalue()
    return data
