"""Auditor dashboards under ``/ui``: server-rendered Jinja2, readable without JavaScript; htmx
(served from this package, no CDN) only refreshes the live parts (status and progress).

Sign-in stores the API token in an HttpOnly, SameSite=Strict cookie; every page checks it like
the API checks a bearer token, with the same roles and visibility (one dependency,
:data:`Viewer`: signed out, a page redirects to the sign-in page, a live part answers 401 or 404).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.audits import repository as audits
from app.audits.service import artefact, as_out, cancel_audit, record_download
from app.auth import SessionDep, user_for_token
from app.certificates import service as certificates
from app.certificates.schemas import ApprovalRequest
from app.deps import SettingsDep, StoreDep
from app.errors import AppError
from app.networks import repository as networks
from app.orm import ACTIVE, Network, User

__all__ = ["router"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parents[2] / "templates"))
STATIC = Path(__file__).resolve().parents[1] / "static"
COOKIE = "recon_audit_token"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
APPROVERS = ("auditor", "admin")
VERDICTS = ("unstable", "inconclusive", "stable", "skipped")
TokenCookie = Annotated[str | None, Cookie(alias=COOKIE)]


def _login() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303)


class _SignedOut(Exception):
    """No signed-in user (no cookie, or an unknown, rotated or revoked token, or a disabled
    user's): the route answers ``response``."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


class _DashboardRoute(APIRoute):
    """A dashboard route: a request that :func:`_signed_in` refused gets that answer (the
    sign-in page, 401 or 404), not the API's JSON error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answered(request: Request) -> Response:
            try:
                return await handler(request)
            except _SignedOut as signed_out:
                return signed_out.response

        return answered


def _signed_in(otherwise: Callable[[], Response]) -> Callable[[Session, str | None], User]:
    """The dependency of the user the session cookie signs in; ``otherwise()`` answers a
    request without one."""

    def viewer(session: SessionDep, token: TokenCookie = None) -> User:
        user = user_for_token(session, token)
        if user is None:
            raise _SignedOut(otherwise())
        return user

    return viewer


#: the signed-in user of a page (signed out: redirected to the sign-in page)
Viewer = Annotated[User, Depends(_signed_in(_login))]
#: ... of the list's rows htmx polls (signed out: 401)
ViewerOr401 = Annotated[User, Depends(_signed_in(lambda: Response(status_code=401)))]
#: ... of an audit's status block or files (signed out: 404, as for an audit one may not see)
ViewerOr404 = Annotated[User, Depends(_signed_in(lambda: Response(status_code=404)))]
router = APIRouter(prefix="/ui", include_in_schema=False, route_class=_DashboardRoute)


def _page(request: Request, name: str, user: User | None, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, f"dashboard/{name}", {"user": user, **context})


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = STATIC / name
    if path.parent != STATIC or not path.is_file():
        return FileResponse(STATIC / "dashboard.css", status_code=404)
    media = "text/css" if name.endswith(".css") else "text/javascript"
    return FileResponse(path, media_type=media)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return _page(request, "login.html.j2", None, error=None)


@router.post("/login")
def login(request: Request, session: SessionDep, token: Annotated[str, Form()]) -> Response:
    user = user_for_token(session, token.strip())
    if user is None:
        return _page(request, "login.html.j2", None, error="invalid token")
    response = RedirectResponse("/ui/audits", status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = _login()
    response.delete_cookie(COOKIE)
    return response


@router.get("")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/audits", status_code=303)


def _filtered(
    session: Session, user: User, status: str | None, verdict: str | None, model: str | None
) -> list[dict[str, Any]]:
    rows = []
    names = {n.id: n.name for n in networks.listed(session, user)}
    for audit in audits.listed(session, user, status or None):
        if model and audit.network_id != model:
            continue
        verdicts = audit.verdicts or {}
        if verdict and verdict not in verdicts.values():
            continue
        rows.append({"audit": as_out(audit), "model_name": names.get(audit.network_id, "?")})
    return rows


@router.get("/audits")
def audit_list(
    request: Request,
    session: SessionDep,
    user: Viewer,
    status: str | None = None,
    verdict: str | None = None,
    model: str | None = None,
) -> Response:
    rows = _filtered(session, user, status, verdict, model)
    return _page(
        request,
        "audits.html.j2",
        user,
        rows=rows,
        statuses=STATUSES,
        verdicts=VERDICTS,
        models=networks.listed(session, user),
        chosen={"status": status or "", "verdict": verdict or "", "model": model or ""},
        query=request.url.query,
    )


@router.get("/audits/rows")
def audit_rows(
    request: Request,
    session: SessionDep,
    user: ViewerOr401,
    status: str | None = None,
    verdict: str | None = None,
    model: str | None = None,
) -> Response:
    """The list's rows alone (htmx polls this for live status and progress)."""
    rows = _filtered(session, user, status, verdict, model)
    return _page(request, "audit_rows.html.j2", user, rows=rows)


def _detail(session: Session, user: User, audit_id: str) -> dict[str, Any] | None:
    audit = audits.visible(session, user, audit_id)
    if audit is None:
        return None
    network = session.get(Network, audit.network_id)
    result = audits.result_of(session, audit.id)
    figures = sorted(
        Path(name).stem for name in (result.files if result else {}) if name.startswith("figures/")
    )
    approval = certificates.approval_of(session, audit.id)
    return {
        "audit": as_out(audit),
        "network": network,
        "results": result.results if result else None,
        "figures": figures,
        "approval": certificates.as_out(session, approval) if approval else None,
        "can_approve": user.role in APPROVERS and approval is None and result is not None,
        # as the API's cancel: its owner or an admin, while it is queued or running
        "can_cancel": audit.status in ACTIVE
        and (audit.owner_id == user.id or user.role == "admin"),
    }


def _audit_page(
    request: Request,
    session: Session,
    user: User,
    audit_id: str,
    message: str | None = None,
    error: str | None = None,
) -> Response:
    """An audit's page (with what an action did: ``message`` or ``error``), or "missing"."""
    detail = _detail(session, user, audit_id)
    if detail is None:
        return _page(request, "missing.html.j2", user, what=f"audit {audit_id}")
    return _page(request, "audit.html.j2", user, **detail, message=message, error=error)


@router.get("/audits/{audit_id}")
def audit_page(request: Request, audit_id: str, session: SessionDep, user: Viewer) -> Response:
    return _audit_page(request, session, user, audit_id)


@router.post("/audits/{audit_id}/approve")
def approve(
    request: Request,
    audit_id: str,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    user: Viewer,
    password: Annotated[str, Form(alias="token")],
    comment: Annotated[str, Form()] = "",
) -> Response:
    """The auditor's sign-off: re-enter the token (step-up) to add the "approved" signature."""
    message, error = None, None
    if user.role not in APPROVERS:
        error = "only auditors and admins approve audits"
    else:
        try:
            certificates.approve(
                session,
                store,
                settings,
                user,
                audit_id,
                ApprovalRequest(token=password.strip() or "-", comment=comment[:2000]),
            )
            message = "approved: the certificate now carries your signature"
        except AppError as exc:
            session.rollback()
            error = exc.message
    return _audit_page(request, session, user, audit_id, message, error)


@router.post("/audits/{audit_id}/cancel")
def cancel(request: Request, audit_id: str, session: SessionDep, user: Viewer) -> Response:
    """Cancel a queued or running audit (its owner or an admin), as
    ``POST /api/v1/audits/{id}/cancel`` does; the page again, with what happened."""
    message, error = None, None
    try:
        cancel_audit(session, user, audit_id)
        message = "cancelled: a worker running it stops at its next progress check"
    except AppError as exc:
        session.rollback()
        error = exc.message
    return _audit_page(request, session, user, audit_id, message, error)


@router.get("/audits/{audit_id}/status")
def audit_status(
    request: Request, audit_id: str, session: SessionDep, user: ViewerOr404
) -> Response:
    """The status block alone (htmx polls this while the audit runs)."""
    audit = audits.visible(session, user, audit_id)
    if audit is None:
        return Response(status_code=404)
    return _page(request, "audit_status.html.j2", user, audit=as_out(audit))


@router.get("/audits/{audit_id}/files/{name:path}")
def audit_file(
    audit_id: str, name: str, session: SessionDep, store: StoreDep, user: ViewerOr404
) -> Response:
    """A stored artefact (figure, certificate, results) of a finished audit, re-verified and
    resolved as the API does (the approved certificate once there is one); downloads of the
    certificate and the results are logged."""
    audit = audits.visible(session, user, audit_id)
    result = audits.result_of(session, audit.id) if audit else None
    if result is None or name not in result.files:
        return Response(status_code=404)
    sha, path = artefact(session, store, result, name)
    if name in ("report.pdf", "results.json"):
        record_download(session, user, audit_id, name, sha)
    media = {".png": "image/png", ".pdf": "application/pdf", ".json": "application/json"}
    return FileResponse(path, media_type=media.get(Path(name).suffix, "text/html"))


@router.get("/compare")
def compare(
    request: Request, session: SessionDep, user: Viewer, a: str = "", b: str = ""
) -> Response:
    left, right = _detail(session, user, a), _detail(session, user, b)
    choices = [as_out(x) for x in audits.listed(session, user, "succeeded")]
    return _page(
        request, "compare.html.j2", user, left=left, right=right, choices=choices, a=a, b=b
    )


@router.get("/models")
def model_list(request: Request, session: SessionDep, user: Viewer) -> Response:
    return _page(request, "models.html.j2", user, models=networks.listed(session, user))


@router.get("/models/{model_id}")
def model_page(request: Request, model_id: str, session: SessionDep, user: Viewer) -> Response:
    network = networks.visible(session, user, model_id)
    if network is None:
        return _page(request, "missing.html.j2", user, what=f"model {model_id}")
    runs = [as_out(x) for x in audits.listed(session, user) if x.network_id == network.id]
    return _page(request, "model.html.j2", user, network=network, audits=runs)
