"""Certificates: ``POST /api/v1/audits/{id}/approve`` (an auditor's signature, step-up) and
``POST /api/v1/verify`` (upload a PDF; anyone signed in)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile, status

from app.api import ErrorOut, errors
from app.auth import AuthFirst, CurrentUser, SessionDep, require_role
from app.certificates import service
from app.certificates.schemas import ApprovalOut, ApprovalRequest, VerificationOut
from app.deps import SettingsDep, StoreDep
from app.errors import TooLarge
from app.orm import User

router = APIRouter(tags=["certificates"], route_class=AuthFirst)
Auditor = Annotated[User, Depends(require_role("auditor", "admin"))]
#: the largest PDF accepted for verification
MAX_PDF_BYTES = 64 * 2**20


@router.post(
    "/api/v1/audits/{audit_id}/approve",
    status_code=status.HTTP_201_CREATED,
    responses={
        **errors(400, 401, 404, 413, 422),
        503: {"model": ErrorOut, "description": "the signer process is not running"},
        403: {
            "model": ErrorOut,
            "description": "the token entered is not the caller's, or the caller created the "
            "audit or submitted its model (separation of duties)",
        },
        409: {"model": ErrorOut, "description": "not finished, or approved already"},
    },
)
def approve_audit(
    audit_id: str,
    request: ApprovalRequest,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    user: Auditor,
) -> ApprovalOut:
    """Approve an audit's certificate: the auditor enters their own token again (step-up), and
    a second signature (meaning "approved", the auditor's name) is added to the PDF as an
    incremental update; the report then serves the approved PDF."""
    approval = service.approve(session, store, settings, user, audit_id, request)
    return service.as_out(session, approval)


@router.post("/api/v1/verify", responses=errors(400, 401, 413, 422))
def verify_certificate(
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="a certificate PDF")],
) -> VerificationOut:
    """Verify a certificate PDF: its signatures (intact, chained to the service's CA, nothing
    but signatures after them), its attachments, and that the service stored this file."""
    data = file.file.read(MAX_PDF_BYTES + 1)
    if len(data) > MAX_PDF_BYTES:
        raise TooLarge(f"the PDF exceeds the limit of {MAX_PDF_BYTES} bytes")
    verification = service.verify_upload(session, settings, user, data)
    return VerificationOut.model_validate(verification.as_dict())
