"""The certificate PDF: its content, PDF/A-3b with the attachments, pages that render, the
service's PAdES signature and the auditor's approval as a second signature."""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

import reconstruction
from app.certificates import (
    APPROVAL_FIELD,
    ISSUANCE_FIELD,
    ISSUER,
    MEANING_APPROVED,
    MEANING_ISSUED,
    git_revision,
)
from app.certificates.pki import ServiceSigner, Trust
from app.certificates.signing import approve_certificate
from app.errors import Conflict
from tests.app.certificates.conftest import APPROVER, MANIFEST, Rendered

PADES = "/ETSI.CAdES.detached"


def _pages(pdf: bytes, folder: Path, first: int = 1, last: int = 99) -> list[np.ndarray]:
    """The pages rendered at 30 dpi by poppler's pdftoppm, as grey arrays."""
    folder.mkdir(exist_ok=True)
    (folder / "doc.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", "30", "-png", "-f", str(first), "-l", str(last), "doc.pdf", "page"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return [
        np.asarray(Image.open(path).convert("L"))
        for path in sorted(folder.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    ]


def _validate(pdf: bytes, trusted: Trust) -> list[tuple[str, PdfSignatureStatus]]:
    reader = PdfFileReader(BytesIO(pdf))
    out: list[tuple[str, PdfSignatureStatus]] = []
    for sig in reader.embedded_signatures:
        context = ValidationContext(trust_roots=trusted.roots, allow_fetching=False)
        out.append((sig.field_name, validate_pdf_signature(sig, context)))
    return out


def test_the_certificate_says_what_it_certifies(rendered: Rendered) -> None:
    raw = rendered.files.html.read_text(encoding="utf-8")
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())
    certificate = rendered.certificate
    for text in (
        "Instability audit report",  # the report's content stays
        "Audit certificate",
        certificate.id,
        certificate.issued_text,
        reconstruction.__version__,
        git_revision(),
        "Summary",
        "Submitter's statement",
        str(MANIFEST["statement"]),
        str(MANIFEST["description"]),
        "Standards mapping",
        "Principle 8",
        "Principle 9",
        "ISO/IEC TR 24029-1",
        "State the robustness goals",
        "Plan the tests",
        "Define the metrics and the test data",
        "Document the testing protocol",
        "Report the results",
        "§11.50 signature manifestation",
        "Limitations",
        "Reproducibility",
    ):
        assert text in page, text
    # the signature block: printed name, meaning, date and time (UTC)
    block = page[page.index("Signatures") :]
    assert f"{ISSUER} {MEANING_ISSUED} {certificate.issued_text}" in block
    assert re.fullmatch(r"[0-9a-f]{32}", certificate.id)
    assert git_revision() != "unknown"  # a checkout: git rev-parse HEAD

    identity = json.loads(rendered.files.certificate_json.read_text())  # type: ignore[union-attr]
    assert identity["certificate_id"] == certificate.id
    assert identity["git_revision"] == git_revision()
    assert identity["service_version"] == reconstruction.__version__
    assert identity["manifest"] == MANIFEST
    results = rendered.files.results_json.read_bytes()
    assert identity["results_sha256"] == hashlib.sha256(results).hexdigest()


def test_pdf_a3b_with_the_attachments(rendered: Rendered, approved: bytes) -> None:
    for pdf in (rendered.pdf, approved):  # signing keeps the PDF/A identification
        metadata = PdfFileReader(BytesIO(pdf)).root["/Metadata"].data.decode()
        assert re.search(r"pdfaid:part(>|=\")3", metadata)
        assert re.search(r"pdfaid:conformance(>|=\")B", metadata)
    reader = PdfFileReader(BytesIO(rendered.pdf))
    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    attached = {str(names[i]): names[i + 1] for i in range(0, len(names), 2)}
    assert set(attached) == {"results.json", "protocol.yaml", "certificate.json"}
    # associated files (PDF/A-3): listed in the catalog's /AF with their relationship
    catalog_af = reader.root["/AF"]
    associated = [str(catalog_af[i]["/F"]) for i in range(len(catalog_af))]
    assert sorted(associated) == sorted(attached)
    assert attached["results.json"]["/AFRelationship"] == "/Data"
    assert attached["protocol.yaml"]["/AFRelationship"] == "/Source"
    files = rendered.files
    assert attached["results.json"]["/EF"]["/F"].data == files.results_json.read_bytes()
    assert attached["protocol.yaml"]["/EF"]["/F"].data == files.protocol_yaml.read_bytes()  # type: ignore[union-attr]


def test_the_pages_render_and_are_not_blank(approved: bytes, tmp_path: Path) -> None:
    pages = _pages(approved, tmp_path)
    assert len(pages) >= 5
    for index, page in enumerate(pages):
        assert (page < 200).sum() > 200, f"page {index + 1} is blank"


def test_the_service_signature_validates(signed: bytes, trusted: Trust, rendered: Rendered) -> None:
    assert signed.startswith(rendered.pdf)  # signing is an incremental update
    [(name, status)] = _validate(signed, trusted)
    assert name == ISSUANCE_FIELD
    assert status.intact
    assert status.valid
    assert status.trusted
    assert status.bottom_line
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert status.md_algorithm == "sha256"
    sig = PdfFileReader(BytesIO(signed)).embedded_signatures[0]
    assert sig.sig_object["/SubFilter"] == PADES
    assert sig.sig_object["/Name"] == ISSUER
    assert sig.sig_object["/Reason"] == MEANING_ISSUED
    assert sig.docmdp_level is not None  # a certification signature
    # an untrusted root: intact, but not trusted
    context = ValidationContext(trust_roots=[], allow_fetching=False)
    assert not validate_pdf_signature(sig, context).trusted


def test_the_approval_adds_a_second_valid_signature(
    signed: bytes, approved: bytes, signer: ServiceSigner, trusted: Trust, tmp_path: Path
) -> None:
    assert approved.startswith(signed)  # the issued revision is kept as it was
    statuses = dict(_validate(approved, trusted))
    assert list(statuses) == [ISSUANCE_FIELD, APPROVAL_FIELD]
    for status in statuses.values():
        assert status.bottom_line
    issuance, approval = statuses[ISSUANCE_FIELD], statuses[APPROVAL_FIELD]
    assert issuance.coverage == SignatureCoverageLevel.ENTIRE_REVISION
    assert issuance.modification_level == ModificationLevel.FORM_FILLING
    assert approval.coverage == SignatureCoverageLevel.ENTIRE_FILE
    sig = PdfFileReader(BytesIO(approved)).embedded_signatures[1]
    assert sig.sig_object["/Name"] == APPROVER
    assert sig.sig_object["/Reason"] == MEANING_APPROVED
    assert sig.sig_object["/SubFilter"] == PADES
    # the box on the cover was empty and now shows the approval
    before, after = (
        _pages(signed, tmp_path / "a", 1, 1)[0],
        _pages(approved, tmp_path / "b", 1, 1)[0],
    )
    assert before.shape == after.shape
    assert (before != after).sum() > 100
    # once only
    with pytest.raises(Conflict, match="already"):
        approve_certificate(approved, signer, approver="someone", at=datetime.now(UTC))
