"""Verifying certificates offline (``verify_pdf``, ``recon-audit verify``): valid, a flipped
byte, changes appended after signing, another CA, not a PDF."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from app.certificates import APPROVAL_FIELD, ISSUANCE_FIELD, ISSUER, MEANING_APPROVED
from app.certificates.pki import Trust, ensure_local_pki, load_service_signer, trust
from app.certificates.signing import sign_certificate
from app.certificates.verify import verify_pdf
from app.cli import main
from app.errors import Invalid
from app.settings import Settings, get_settings
from tests.app.certificates.conftest import APPROVER, Rendered


def _flip_inside_a_stream(pdf: bytes) -> bytes:
    """One bit changed in the middle of the largest stream (inside the signed range)."""
    starts = [m.end() for m in re.finditer(rb"(?<!end)stream\r?\n", pdf)]
    spans = [(pdf.index(b"endstream", s) - s, s) for s in starts]
    length, start = max(spans)
    position = start + length // 2
    changed = bytearray(pdf)
    changed[position] ^= 0x04
    return bytes(changed)


def _add_annotation(pdf: bytes) -> bytes:
    """An incremental update that adds a text annotation to the first page."""
    writer = IncrementalPdfFileWriter(BytesIO(pdf))
    page = writer.root["/Pages"]["/Kids"][0]
    note = generic.DictionaryObject(  # type: ignore[no-untyped-call]
        {
            generic.pdf_name("/Type"): generic.pdf_name("/Annot"),
            generic.pdf_name("/Subtype"): generic.pdf_name("/Text"),
            generic.pdf_name("/Rect"): generic.ArrayObject(
                [generic.NumberObject(20)] * 4  # type: ignore[no-untyped-call]
            ),
            generic.pdf_name("/Contents"): generic.pdf_string("edited after signing"),
        }
    )
    annotations = page.get("/Annots", generic.ArrayObject())
    annotations.append(writer.add_object(note))
    page[generic.pdf_name("/Annots")] = annotations
    writer.update_container(page)
    out = BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]
    return out.getvalue()


def test_the_signed_and_the_approved_certificates_are_valid(
    signed: bytes, approved: bytes, trusted: Trust, rendered: Rendered
) -> None:
    report = verify_pdf(signed, trusted)
    assert report.status == "valid", report.reason
    assert report.valid
    assert report.reason is None
    [issuance] = report.signatures
    assert (issuance.field, issuance.signer, issuance.meaning) == (ISSUANCE_FIELD, ISSUER, "issued")
    assert issuance.intact
    assert issuance.trusted
    assert issuance.pades
    assert issuance.certification
    assert issuance.coverage == "entire file"
    assert str(issuance.time).endswith("Z")
    assert report.certificate is not None
    assert report.certificate_id == rendered.certificate.id
    assert set(report.attachments) == {"results.json", "protocol.yaml", "certificate.json"}

    report = verify_pdf(approved, trusted)
    assert report.status == "valid", report.reason
    first, second = report.signatures
    assert first.coverage == f"revision {first.revision} of {report.revisions}"
    assert first.modified_after == "signatures only"
    assert (second.field, second.signer, second.meaning) == (
        APPROVAL_FIELD,
        APPROVER,
        MEANING_APPROVED,
    )
    assert second.coverage == "entire file"
    assert second.ok
    document = report.as_dict()
    assert json.loads(json.dumps(document)) == document  # plain JSON


def test_a_flipped_byte_is_invalid_with_the_reason(signed: bytes, trusted: Trust) -> None:
    report = verify_pdf(_flip_inside_a_stream(signed), trusted)
    assert report.status == "invalid"
    assert report.reason is not None
    assert "signed bytes were changed" in report.reason
    assert not report.signatures[0].intact


@pytest.mark.parametrize("which", ["signed", "approved"])
def test_changes_after_the_last_signature_are_invalid(
    which: str, signed: bytes, approved: bytes, trusted: Trust
) -> None:
    pdf = signed if which == "signed" else approved
    annotated = verify_pdf(_add_annotation(pdf), trusted)
    assert annotated.status == "invalid"
    assert "modified after it was signed" in str(annotated.reason)
    assert "is not a signature" in str(annotated.reason)
    appended = verify_pdf(pdf + b"\n%% appended\n" + bytes(range(256)), trusted)
    assert appended.status == "invalid"
    assert "modified after its last signature" in str(appended.reason)


def test_another_ca_is_unknown(rendered: Rendered, trusted: Trust, tmp_path: Path) -> None:
    elsewhere = Settings(data_dir=tmp_path)
    other = load_service_signer(elsewhere)
    foreign = sign_certificate(rendered.pdf, other, approval_box=rendered.files.approval_box)
    report = verify_pdf(foreign, trusted)
    assert report.status == "unknown"
    assert "does not chain to a trusted CA" in str(report.reason)
    assert report.signatures[0].intact
    assert not report.signatures[0].trusted
    assert verify_pdf(foreign, trust(elsewhere)).status == "valid"
    assert ensure_local_pki(tmp_path / "pki").complete()


def test_unsigned_and_not_pdf(rendered: Rendered, trusted: Trust) -> None:
    report = verify_pdf(rendered.pdf, trusted)
    assert report.status == "invalid"
    assert report.reason == "the file carries no digital signature"
    with pytest.raises(Invalid, match="not a PDF"):
        verify_pdf(b"hello", trusted)


@pytest.fixture
def service_data(pki_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's settings: the data directory that holds the test CA."""
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(pki_settings.data_dir))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("service_data")
def test_the_verify_command(approved: bytes, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.pdf", tmp_path / "bad.pdf"
    good.write_bytes(approved)
    bad.write_bytes(_add_annotation(approved))
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(good)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert [s["meaning"] for s in report["signatures"]] == ["issued", "approved"]
    assert report["database"]["checked"] is False
    assert "needs the service" in report["database"]["note"]
    result = runner.invoke(main, ["verify", str(bad)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "invalid"
    (tmp_path / "not.pdf").write_text("plain text")
    for missing in (tmp_path / "missing.pdf", tmp_path / "not.pdf"):
        result = runner.invoke(main, ["verify", str(missing)])
        assert result.exit_code == 2
        assert "Error:" in result.output
