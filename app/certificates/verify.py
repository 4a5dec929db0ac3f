"""Verifying a certificate PDF: its signatures (pyHanko), what changed after them, and the
attachments against the embedded ``certificate.json``. The service adds the database check
(:func:`app.certificates.service.verify_upload`); ``recon-audit verify`` runs this offline.

The outcome, :class:`Verification`, has a ``status``:

* ``valid`` -- every signature is intact and chains to a trusted root, the last one covers the
  whole file, every revision after the first signature is a signature, and the attachments
  match the certificate (and, in the service, the file is a version the service stored);
* ``invalid`` -- a signature does not verify (the signed bytes changed), the file was changed
  after a signature by anything but a signature (a later revision or appended bytes), the
  attachments do not match, the file is not signed or cannot be read, or the service stored a
  different file under this certificate id;
* ``unknown`` -- the file is intact, but its signer does not chain to the trusted roots (another
  CA), its CA's signed list of signers cannot be used, or the service does not know the
  certificate id.

A signer that chains to one of the service's CAs must also be on that CA's signed list of
signers and not revoked there (:class:`app.certificates.pki.Trust`): a certificate the CA's key
issued outside the list (a stolen CA key) or one revoked makes the file ``invalid``.

``reason`` says why when the status is not ``valid``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, Literal

from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography import x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import EmbeddedPdfSignature, validate_pdf_signature
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from app.certificates import CERTIFICATE_SCHEMA
from app.certificates.pki import Trust
from app.errors import Invalid

__all__ = ["SignatureReport", "Status", "Verification", "verify_pdf"]

Status = Literal["valid", "invalid", "unknown"]
PADES = "/ETSI.CAdES.detached"
ATTACHMENTS = ("results.json", "protocol.yaml", "certificate.json")
_LEVELS = {
    ModificationLevel.NONE: "none",
    ModificationLevel.LTA_UPDATES: "signature maintenance only",
    ModificationLevel.FORM_FILLING: "signatures only",
    ModificationLevel.ANNOTATIONS: "annotations",
    ModificationLevel.OTHER: "other changes",
}


@dataclass
class SignatureReport:
    """One signature, in signing order."""

    field: str
    #: the printed name (the signature's ``/Name``, else the certificate's common name)
    signer: str
    #: the signing certificate's subject
    signed_with: str
    #: the meaning (the signature's ``/Reason``): "issued", "approved"
    meaning: str | None
    #: signing time (UTC, ISO 8601) claimed by the signer
    time: str | None
    #: the RFC 3161 timestamp's time when there is one (and whether it verified)
    timestamp: str | None
    timestamp_trusted: bool | None
    #: the signed bytes hash to the signed digest and the signature verifies
    intact: bool
    #: the signer's certificate chains to a trusted root (the service's CA) and, for the
    #: service's own CAs, is on the CA's signed list of signers and not revoked
    trusted: bool
    pades: bool
    certification: bool
    #: the 1-based revision it signs, of ``revisions``
    revision: int
    #: "entire file", or "revision N of M" (later revisions follow), or "unclear"
    coverage: str
    #: what the revisions after it change: "none", "signatures only", "annotations", ...
    modified_after: str | None
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Verification:
    sha256: str
    status: Status
    reason: str | None
    revisions: int = 0
    signatures: list[SignatureReport] = dataclasses.field(default_factory=list)
    #: the embedded certificate.json (None when missing)
    certificate: dict[str, Any] | None = None
    #: attached file name -> SHA-256
    attachments: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the service's database check ({"checked": False, "note": ...} offline)
    database: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the attachments' bytes (for the database check; not reported)
    files: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    @property
    def certificate_id(self) -> str | None:
        if not self.certificate:
            return None
        value = self.certificate.get("certificate_id")
        return str(value) if value else None

    def downgrade(self, status: Status, reason: str) -> None:
        """Lower the status (valid > unknown > invalid), keeping the first reason given at the
        lowest level."""
        order = {"valid": 2, "unknown": 1, "invalid": 0}
        if order[status] < order[self.status]:
            self.status, self.reason = status, reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "status": self.status,
            "reason": self.reason,
            "sha256": self.sha256,
            "revisions": self.revisions,
            "signatures": [{**asdict(s), "ok": s.ok} for s in self.signatures],
            "certificate": self.certificate,
            "attachments": self.attachments,
            "database": self.database,
        }


def _utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _common_name(cert: asn1_x509.Certificate) -> str:
    name = cert.subject.native.get("common_name")
    return str(name) if name else cert.subject.human_friendly


def _coverage(level: SignatureCoverageLevel | None, revision: int, total: int) -> str:
    if level == SignatureCoverageLevel.ENTIRE_FILE:
        return "entire file"
    if level == SignatureCoverageLevel.ENTIRE_REVISION:
        return f"revision {revision} of {total}"
    return "unclear"


def _report(
    sig: EmbeddedPdfSignature, trust: Trust, total: int
) -> tuple[SignatureReport, list[tuple[Status, str]]]:
    """The signature's report and its problems, each with the status it leads to."""
    cert = sig.signer_cert
    sig_object = sig.sig_object
    report = SignatureReport(
        field=str(sig.field_name),
        signer=_text(sig_object.get("/Name")) or _common_name(cert),
        signed_with=cert.subject.human_friendly,
        meaning=_text(sig_object.get("/Reason")),
        time=_utc(sig.self_reported_timestamp),
        timestamp=None,
        timestamp_trusted=None,
        intact=False,
        trusted=False,
        pades=sig_object.get("/SubFilter") == PADES,
        certification=sig.docmdp_level is not None,
        revision=sig.signed_revision + 1,
        coverage="unclear",
        modified_after=None,
    )
    issues: list[tuple[Status, str]] = []
    context = ValidationContext(trust_roots=trust.roots, allow_fetching=False)
    try:
        status: PdfSignatureStatus = validate_pdf_signature(sig, context)
    except (SignatureValidationError, ValueError, KeyError) as exc:
        issues.append(("invalid", f"the signature cannot be validated: {exc}"))
        report.problems = [message for _, message in issues]
        return report, issues
    report.intact = bool(status.intact and status.valid)
    report.trusted = bool(status.trusted)
    report.time = _utc(status.signer_reported_dt) or report.time
    if status.timestamp_validity is not None:
        report.timestamp = _utc(status.timestamp_validity.timestamp)
        report.timestamp_trusted = bool(
            status.timestamp_validity.intact
            and status.timestamp_validity.valid
            and status.timestamp_validity.trusted
        )
    report.coverage = _coverage(status.coverage, report.revision, total)
    level = status.modification_level
    report.modified_after = _LEVELS.get(level) if level is not None else None
    if not status.intact:
        issues.append(("invalid", "the signed bytes were changed: their digest does not match"))
    elif not status.valid:
        issues.append(("invalid", "the cryptographic signature does not verify"))
    if status.intact and status.valid and not status.trusted:
        issues.append(
            ("unknown", f"its certificate ({report.signed_with}) does not chain to a trusted CA")
        )
    refusal = trust.refusal(x509.load_der_x509_certificate(cert.dump())) if report.trusted else None
    if refusal is not None:
        report.trusted = False
        issues.append(refusal)
    if report.timestamp_trusted is False:
        issues.append(("invalid", "its timestamp does not verify"))
    if status.docmdp_ok is False:
        issues.append(
            (
                "invalid",
                f"the changes after it ({report.modified_after}) are not allowed by the "
                "certification signature",
            )
        )
    report.problems = [message for _, message in issues]
    return report, issues


def _embedded_files(reader: PdfFileReader) -> dict[str, bytes]:
    """The document's embedded files by name (``/Names /EmbeddedFiles``; flat name tree)."""
    out: dict[str, bytes] = {}
    try:
        tree = reader.root["/Names"]["/EmbeddedFiles"]
    except KeyError:
        return out
    stack = [tree]
    while stack:
        node = stack.pop()
        if "/Kids" in node:
            stack.extend(kid.get_object() for kid in node["/Kids"])
        names = node.get("/Names", generic.ArrayObject())
        for index in range(0, len(names) - 1, 2):  # [name, file spec, name, file spec, ...]
            try:
                stream = names[index + 1]["/EF"]["/F"]
                out[str(names[index])] = stream.data
            except (KeyError, TypeError, AttributeError):
                continue
    return out


def _check_attachments(result: Verification, files: dict[str, bytes]) -> None:
    result.files = files
    result.attachments = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    raw = files.get("certificate.json")
    if raw is None:
        result.downgrade("unknown", "no certificate.json attached: not a recon-audit certificate")
        return
    try:
        certificate = json.loads(raw)
    except ValueError:
        result.downgrade("invalid", "the attached certificate.json is not valid JSON")
        return
    if not isinstance(certificate, dict) or certificate.get("schema") != CERTIFICATE_SCHEMA:
        result.downgrade("unknown", "the attached certificate.json has an unknown schema")
        return
    result.certificate = certificate
    for name, key in (
        ("results.json", "results_sha256"),
        ("protocol.yaml", "protocol_yaml_sha256"),
    ):
        if name not in result.attachments:
            result.downgrade("invalid", f"{name} is not attached")
        elif result.attachments[name] != certificate.get(key):
            result.downgrade(
                "invalid", f"the attached {name} does not match the certificate's {key}"
            )


def _check_revisions(result: Verification) -> None:
    """Every revision after the first signature must be a signature, and the last signature
    must cover the whole file (no bytes appended after it)."""
    signed = {s.revision for s in result.signatures}
    first = min(signed)
    for revision in range(first + 1, result.revisions + 1):
        if revision not in signed:
            after = [s.field for s in result.signatures if s.revision < revision][-1]
            result.downgrade(
                "invalid",
                f"the file was modified after it was signed: revision {revision} of "
                f"{result.revisions} (after the signature {after!r}) is not a signature",
            )
            return
    last = result.signatures[-1]
    if last.coverage != "entire file":
        result.downgrade(
            "invalid",
            f"the file was modified after its last signature ({last.field!r}): it has bytes "
            "that no signature covers",
        )


def _unreadable(
    sig: EmbeddedPdfSignature, exc: Exception
) -> tuple[SignatureReport, list[tuple[Status, str]]]:
    problem = f"the signature cannot be validated: {type(exc).__name__}: {exc}"
    report = SignatureReport(
        field=str(sig.field_name),
        signer="unknown",
        signed_with="unknown",
        meaning=None,
        time=None,
        timestamp=None,
        timestamp_trusted=None,
        intact=False,
        trusted=False,
        pades=False,
        certification=False,
        revision=sig.signed_revision + 1,
        coverage="unclear",
        modified_after=None,
        problems=[problem],
    )
    return report, [("invalid", problem)]


def verify_pdf(data: bytes, trust: Trust) -> Verification:
    """Verify a certificate PDF offline against ``trust`` (see the module).
    :class:`~app.errors.Invalid` when ``data`` is not a PDF at all."""
    if not data.lstrip()[:5] == b"%PDF-":
        raise Invalid("not a PDF file (no %PDF- header)", field="file")
    result = Verification(sha256=hashlib.sha256(data).hexdigest(), status="valid", reason=None)
    try:
        reader = PdfFileReader(BytesIO(data), strict=False)
        result.revisions = reader.xrefs.total_revisions
        sigs = sorted(reader.embedded_regular_signatures, key=lambda s: s.signed_revision)
    except Exception as exc:  # a damaged file: pyHanko raises several kinds
        result.downgrade("invalid", f"the file cannot be read as a PDF: {exc}")
        return result
    if not sigs:
        result.downgrade("invalid", "the file carries no digital signature")
        return result
    later: list[tuple[Status, str]] = []
    for sig in sigs:
        try:
            report, issues = _report(sig, trust, result.revisions)
        except Exception as exc:  # a damaged signature: report it, do not crash
            report, issues = _unreadable(sig, exc)
        result.signatures.append(report)
        for level, problem in issues:
            reason = f"signature {report.field!r}: {problem}"
            if not report.intact:  # changed bytes say the most: report them first
                result.downgrade(level, reason)
            else:
                later.append((level, reason))
    _check_revisions(result)
    for level, reason in later:
        result.downgrade(level, reason)
    try:
        files = _embedded_files(reader)
    except Exception as exc:
        result.downgrade("invalid", f"the attachments cannot be read: {exc}")
        files = {}
    _check_attachments(result, files)
    return result
