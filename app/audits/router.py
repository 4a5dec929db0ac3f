"""``/api/v1/audits``: create (202, enqueued after commit), list, status, results, figures,
the PDF report. Downloads are recorded in the audit log."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.api import conditional, errors
from app.audits import repository, service
from app.audits.schemas import AuditCreate, AuditOut
from app.auth import AuthFirst, CurrentUser, SessionDep
from app.deps import SettingsDep, StoreDep
from app.errors import Conflict, NotFound
from app.orm import Audit, AuditResult, Status, User
from app.pagination import HEADERS, Paged

router = APIRouter(prefix="/api/v1/audits", tags=["audits"], route_class=AuthFirst)
_FIGURE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
def create_audit(
    request: AuditCreate, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> AuditOut:
    """Queue an audit. 429 (with ``Retry-After``) when the user has the most audits queued or
    running allowed at once (setting ``max_active_audits``); 503 (with ``Retry-After``, nothing
    stored) when the task queue cannot be reached."""
    audit = service.create_audit(session, settings, user, request)
    service.send(session, audit.id)
    return service.as_out(audit)


@router.post("/{audit_id}/cancel", responses=errors(401, 403, 404, 409))
def cancel_audit(audit_id: str, session: SessionDep, user: CurrentUser) -> AuditOut:
    """Cancel a queued or running audit (its owner or an admin): it ends ``cancelled``; a
    worker running it stops at its next progress check. 403: neither the owner nor an admin;
    409: the audit is finished already."""
    return service.as_out(service.cancel_audit(session, user, audit_id))


@router.get("", responses={200: {"headers": HEADERS}, **errors(401, 422)})
def list_audits(
    session: SessionDep,
    user: CurrentUser,
    pages: Paged,
    status: Status | None = None,
) -> list[AuditOut]:
    """The audits the caller may see, newest first, a page at a time."""
    audits = pages.rows(session, repository.listing(user, status), repository.ORDER)
    return [service.as_out(a) for a in audits]


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


@router.get(
    "/{audit_id}",
    response_model=AuditOut,
    responses={
        200: {"headers": {"ETag": {"description": "The status's version.", "schema": {}}}},
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        **errors(401, 404),
    },
)
def get_audit(
    audit_id: str,
    session: SessionDep,
    user: CurrentUser,
    if_none_match: Annotated[str | None, Header(description="An ETag of this audit.")] = None,
) -> Response:
    """An audit's status, progress and verdicts. Pollers send the last ETag in
    ``If-None-Match`` and get 304 with no body while nothing changed."""
    audit = repository.status_of(session, user, audit_id)
    if audit is None:
        raise NotFound(f"no audit {audit_id}")
    return conditional(service.as_out(audit), if_none_match)


@router.get("/{audit_id}/results", responses=errors(401, 404, 409))
def get_results(audit_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    result = _finished(session, user, audit_id)
    service.record_download(
        session, user, audit_id, "results.json", str(result.files.get("results.json"))
    )
    return result.results


@router.get(
    "/{audit_id}/figures/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **errors(401, 404, 409)},
)
def get_figure(
    audit_id: str, name: str, session: SessionDep, user: CurrentUser, store: StoreDep
) -> FileResponse:
    stem = name.removesuffix(".png")
    if not _FIGURE.match(stem):
        raise NotFound(f"no figure {name}")
    result = _finished(session, user, audit_id)
    _, path = service.artefact(session, store, result, f"figures/{stem}.png")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/{audit_id}/report.pdf",
    response_class=FileResponse,
    responses={200: {"content": {"application/pdf": {}}}, **errors(401, 404, 409, 422)},
)
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
