"""``/api/v1/audits``: create (202, enqueued after commit), list, status, results, figures,
the PDF report. Downloads are recorded in the audit log."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.audits import repository, service
from app.audits.schemas import AuditCreate, AuditOut
from app.auth import AuthFirst, CurrentUser, SessionDep
from app.deps import SettingsDep, StoreDep
from app.errors import Conflict, NotFound
from app.orm import Audit, AuditResult, User

router = APIRouter(prefix="/api/v1/audits", tags=["audits"], route_class=AuthFirst)
_FIGURE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        429: {
            "description": "the user has the most audits queued or running allowed at once "
            "(setting max_active_audits); Retry-After says when to try again",
        }
    },
)
def create_audit(
    request: AuditCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> AuditOut:
    audit = service.create_audit(session, settings, user, request)
    service.enqueue(audit.id)
    return service.as_out(audit)


@router.post(
    "/{audit_id}/cancel",
    responses={
        403: {"description": "neither the audit's owner nor an admin"},
        404: {"description": "no such audit (or not visible)"},
        409: {"description": "the audit is finished already"},
    },
)
def cancel_audit(audit_id: str, session: SessionDep, user: CurrentUser) -> AuditOut:
    """Cancel a queued or running audit (its owner or an admin): it ends ``cancelled``; a
    worker running it stops at its next progress check."""
    return service.as_out(service.cancel_audit(session, user, audit_id))


@router.get("")
def list_audits(
    session: SessionDep, user: CurrentUser, status: str | None = None
) -> list[AuditOut]:
    return [service.as_out(a) for a in repository.listed(session, user, status)]


def _audit(session: Session, user: User, audit_id: str) -> Audit:
    audit = repository.visible(session, user, audit_id)
    if audit is None:
        raise NotFound(f"no audit {audit_id}")
    return audit


def _finished(session: Session, user: User, audit_id: str) -> AuditResult:
    audit = _audit(session, user, audit_id)
    result = repository.result_of(session, audit.id)
    if result is None:
        raise Conflict(f"audit {audit_id} has no results yet (status: {audit.status})")
    return result


@router.get("/{audit_id}")
def get_audit(audit_id: str, session: SessionDep, user: CurrentUser) -> AuditOut:
    return service.as_out(_audit(session, user, audit_id))


@router.get("/{audit_id}/results")
def get_results(audit_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    result = _finished(session, user, audit_id)
    service.record_download(
        session, user, audit_id, "results.json", str(result.files.get("results.json"))
    )
    return result.results


@router.get("/{audit_id}/figures/{name}", response_class=FileResponse)
def get_figure(
    audit_id: str, name: str, session: SessionDep, user: CurrentUser, store: StoreDep
) -> FileResponse:
    stem = name.removesuffix(".png")
    if not _FIGURE.match(stem):
        raise NotFound(f"no figure {name}")
    result = _finished(session, user, audit_id)
    _, path = service.artefact(session, store, result, f"figures/{stem}.png")
    return FileResponse(path, media_type="image/png")


@router.get("/{audit_id}/report.pdf", response_class=FileResponse)
def get_report(
    audit_id: str,
    session: SessionDep,
    user: CurrentUser,
    store: StoreDep,
    version: Literal["current", "issued"] = "current",
) -> FileResponse:
    """The signed certificate: its approved version once an auditor approved it
    (``version=issued``: the one the service issued)."""
    result = _finished(session, user, audit_id)
    sha, path = service.artefact(session, store, result, "report.pdf", version=version)
    service.record_download(session, user, audit_id, "report.pdf", sha)
    return FileResponse(path, media_type="application/pdf", filename=f"audit-{audit_id}.pdf")
