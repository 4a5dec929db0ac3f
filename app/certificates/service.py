"""Certificates in the service: the worker has each audit's PDF signed (:func:`sign_report`), an
auditor approves it with a second signature (:func:`approve`), anyone signed in verifies a
file (:func:`verify_upload`). Both signatures are made by the signer process
(:mod:`app.certificates.signer`): neither the worker nor the API reads the signing key.
Issuing, approving and verifying are recorded in the audit log (``certificate.signed``,
``audit.approved``, ``certificate.verified``)."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import events
from app.auth import token_hash
from app.certificates import MEANING_APPROVED, SignatureBox
from app.certificates.pki import trust
from app.certificates.schemas import ApprovalOut, ApprovalRequest, Approver
from app.certificates.signer import sign_approval, sign_issued
from app.certificates.verify import Verification, verify_pdf
from app.errors import Conflict, Forbidden, NotFound
from app.orm import Approval, Audit, AuditResult, Network, User
from app.settings import Settings
from app.storage import Spooled, Store

__all__ = [
    "SignedReport",
    "approval_of",
    "approve",
    "as_out",
    "current_pdf",
    "sign_report",
    "verify_upload",
]


@dataclass(frozen=True)
class SignedReport:
    """What :func:`sign_report` did: the signed file's hash, the signing certificate's subject
    and where the key came from."""

    sha256: str
    signer: str
    source: str

    def event(self) -> dict[str, str]:
        return {"pdf_sha256": self.sha256, "signed_with": self.signer, "key": self.source}


def sign_report(settings: Settings, pdf: Path, approval_box: SignatureBox | None) -> SignedReport:
    """Have the rendered certificate signed in place (the last step before it is stored)."""
    signed, subject, source = sign_issued(settings, pdf.read_bytes(), approval_box)
    pdf.write_bytes(signed)
    return SignedReport(hashlib.sha256(signed).hexdigest(), subject, source)


def approval_of(session: Session, audit_id: str) -> Approval | None:
    query = (
        select(Approval)
        .where(Approval.audit_id == audit_id, Approval.meaning == MEANING_APPROVED)
        .order_by(Approval.id.desc())
    )
    return session.scalars(query).first()


def current_pdf(session: Session, result: AuditResult) -> str | None:
    """The report to serve: the approved PDF when there is one, else the issued one."""
    approval = approval_of(session, result.audit_id)
    if approval is not None:
        return approval.pdf_sha256
    sha = result.files.get("report.pdf")
    return str(sha) if sha is not None else None


def as_out(session: Session, approval: Approval) -> ApprovalOut:
    approver = session.get(User, approval.approver_id)
    assert approver is not None
    return ApprovalOut(
        audit_id=approval.audit_id,
        meaning=approval.meaning,
        approver=Approver(id=approver.id, name=approver.name, role=approver.role),
        comment=approval.comment,
        pdf_sha256=approval.pdf_sha256,
        previous_pdf_sha256=approval.previous_pdf_sha256,
        created_at=approval.created_at,
    )


def _separate_duties(session: Session, user: User, audit: Audit) -> None:
    """Separation of duties: nobody approves an audit they created, or one of a model they
    submitted (403)."""
    if audit.owner_id == user.id:
        raise Forbidden(
            "you created this audit: its approval must come from another auditor "
            "(separation of duties)"
        )
    network = session.get(Network, audit.network_id)
    if network is not None and network.owner_id == user.id:
        raise Forbidden(
            "you submitted the model of this audit: its approval must come from another "
            "auditor (separation of duties)"
        )


def approve(
    session: Session,
    store: Store,
    settings: Settings,
    user: User,
    audit_id: str,
    request: ApprovalRequest,
) -> Approval:
    """The auditor ``user`` approves the audit's certificate: step-up check (the token entered
    again must be the caller's own), a second signature added to the issued PDF as an
    incremental update, the new PDF stored (the issued one stays), an ``approvals`` row and an
    ``audit.approved`` event. 403 when ``user`` created the audit or submitted its model; 409
    when the audit has no results yet or is approved already."""
    if not secrets.compare_digest(token_hash(request.token), user.token_hash):
        raise Forbidden(
            "the token entered to sign is not yours: enter your own API token again",
            field="token",
        )
    audit = session.get(Audit, audit_id, with_for_update=True)
    if audit is None:
        raise NotFound(f"no audit {audit_id}")
    _separate_duties(session, user, audit)
    result = session.get(AuditResult, audit_id)
    if result is None or audit.status != "succeeded":
        raise Conflict(f"audit {audit_id} is not finished (status: {audit.status})")
    existing = approval_of(session, audit_id)
    if existing is not None:
        raise Conflict(f"audit {audit_id} was approved already ({existing.created_at:%Y-%m-%d})")
    issued = result.files.get("report.pdf")
    if issued is None:
        raise Conflict(f"audit {audit_id} has no certificate to approve")
    at = datetime.now(UTC).replace(microsecond=0)
    signed = sign_approval(
        settings,
        store.verified(issued).read_bytes(),
        approver=user.name,
        comment=request.comment,
        at=at,
    )
    sha = hashlib.sha256(signed).hexdigest()
    approval = Approval(
        audit_id=audit_id,
        approver_id=user.id,
        meaning=MEANING_APPROVED,
        comment=request.comment,
        pdf_sha256=sha,
        previous_pdf_sha256=str(issued),
        created_at=at,
    )
    folder = store.workdir("approval-")
    try:
        path = folder / "report.pdf"
        path.write_bytes(signed)
        session.add(approval)
        try:
            session.flush()
        except IntegrityError as exc:  # approved at the same moment by someone else
            session.rollback()
            raise Conflict(f"audit {audit_id} was approved already") from exc
        events.record(
            session,
            user.id,
            "audit.approved",
            f"audit:{audit_id}",
            {
                "meaning": MEANING_APPROVED,
                "approver": user.name,
                "pdf_sha256": sha,
                "previous_pdf_sha256": str(issued),
                "comment": request.comment[:500],
            },
        )
        store.commit_with([Spooled(path, sha, len(signed))], session)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return approval


def _database_check(session: Session, verification: Verification) -> None:
    """Is this file a certificate the service issued (or its approved version), with the
    results it stored?"""
    certificate = verification.certificate or {}
    audit_id = certificate.get("audit_id") or verification.certificate_id
    check: dict[str, object] = {
        "checked": True,
        "known": False,
        "certificate_id": verification.certificate_id,
    }
    verification.database = check
    result = session.get(AuditResult, str(audit_id)) if audit_id else None
    if result is None:
        verification.downgrade(
            "unknown",
            f"certificate {verification.certificate_id or '(no id)'} is not known to this service",
        )
        return
    check["audit_id"] = result.audit_id
    check["known"] = True
    approvals = session.scalars(select(Approval).where(Approval.audit_id == result.audit_id))
    versions = {str(result.files.get("report.pdf")): "issued"}
    versions.update({a.pdf_sha256: a.meaning for a in approvals})
    check["version"] = versions.get(verification.sha256)
    check["stored_versions"] = sorted(versions)
    if check["version"] is None:
        verification.downgrade(
            "invalid",
            f"this file is not a version of certificate {audit_id} that the service stored",
        )
    embedded = verification.attachments.get("results.json")
    check["results_match"] = embedded == result.results_sha256 and _same_content(
        verification.files.get("results.json"), result.results
    )
    if not check["results_match"]:
        verification.downgrade(
            "invalid", "the attached results.json is not the results the service stored"
        )


def _same_content(attached: bytes | None, stored: Any) -> bool:
    """The certificate's signed results.json holds the results the service serves (their
    content, not a stored hash of it: an edited results row shows)."""
    if attached is None:
        return False
    try:
        return events.results_digest(json.loads(attached)) == events.results_digest(stored)
    except ValueError:
        return False


def verify_upload(session: Session, settings: Settings, user: User, data: bytes) -> Verification:
    """Verify an uploaded PDF against the service's CA, its signed list of signers and its
    database; records a ``certificate.verified`` event."""
    verification = verify_pdf(data, trust(settings))
    _database_check(session, verification)
    audit_id = verification.database.get("audit_id") if verification.database["known"] else None
    events.record(
        session,
        user.id,
        "certificate.verified",
        f"audit:{audit_id}" if audit_id else f"file:{verification.sha256}",
        {
            "sha256": verification.sha256,
            "status": verification.status,
            "reason": verification.reason,
            "certificate_id": verification.certificate_id,
        },
    )
    session.commit()
    return verification
