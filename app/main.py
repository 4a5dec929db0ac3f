"""The FastAPI application: routers by domain, one error format, health and readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import reconstruction
from app import queue
from app.api import ErrorOut
from app.audits.router import router as audits_router
from app.certificates.router import router as certificates_router
from app.dashboard.router import router as dashboard_router
from app.db import API_THREADS, get_engine
from app.errors import AppError
from app.images.router import router as images_router
from app.networks.router import router as networks_router
from app.sandbox import jail_problem
from app.settings import get_settings
from app.users.router import router as users_router

__all__ = ["BodyLimit", "create_app"]


class BodyLimit:
    """Refuse request bodies above the upload limit with 413 while they stream in (chunked or
    not; at once when the declared Content-Length is too large), so an oversize upload is never
    spooled whole. ``slack`` bytes above ``limit`` are let through for the multipart framing;
    the message quotes ``limit``, as the upload's own check does."""

    def __init__(self, app: ASGIApp, limit: int, slack: int) -> None:
        self.app, self.limit, self.most = app, limit, limit + slack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.most:
            await _too_large(self.limit, send)
            return
        seen, started, refused = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.most:
                    # answer 413 now; the app sees the client gone and its answer is dropped
                    if not started and not refused:
                        refused = True
                        await _too_large(self.limit, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)


async def _too_large(limit: int, send: Send) -> None:
    body = ErrorOut(detail=f"the upload exceeds the limit of {limit} bytes", field=None)
    response = JSONResponse(body.model_dump(), 413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error(
    status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorOut(detail=detail, field=field).model_dump(), status, headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's list of validation errors as the one error body: the first error's input and
    message (and how many more there are)."""
    problems = list(exc.errors())
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":  # its loc holds the offset in the body
        loc = loc[:1]
    # ("query", "limit") -> "limit", ("body", "role") -> "role", ("body",) -> "body"
    field = ".".join(loc[1:] if len(loc) > 1 else loc) or None
    message = str(first["msg"])
    if "<class " in message:  # a library's own words about a Python type
        message = "must be a file" if "UploadFile" in message else "has the wrong type"
    detail = f"{field}: {message}" if field else message
    if len(problems) > 1:
        detail += f" (and {len(problems) - 1} more)"
    return _error(422, detail, field)


def _allowed(app: FastAPI, scope: Scope) -> str:
    """The methods a path answers to, for ``Allow``: those some route matches fully."""
    methods = {"OPTIONS"}
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # the sync endpoints' threads, as many as the requests that may hold a session (app.db)
    anyio.to_thread.current_default_thread_limiter().total_tokens = API_THREADS
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="recon-audit",
        version=reconstruction.__version__,
        description="Audits deep-learning image reconstruction for the instabilities of Antun "
        "et al. (PNAS 2020), beside stable compressed-sensing baselines. Every error is "
        '`{"detail": str, "field": str | null}`; datetimes are ISO 8601 in UTC (`Z`).',
        lifespan=_lifespan,
    )

    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        return _error(exc.status_code, exc.message, exc.field, exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(DataError)
    async def unstorable(_request: Request, _exc: DataError) -> JSONResponse:
        # an input the database refuses as a value (PostgreSQL: a NUL character in a text);
        # the request's session is rolled back, nothing is stored
        return _error(422, "an input holds a value the database cannot take (e.g. NUL)")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(app, request.scope)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
        return _error(exc.status_code, str(exc.detail), None, headers)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["broker"] = queue.broker_problem() or "ok"
        # uploads and audits need the jail: without it they are refused (503), so not ready
        problem = jail_problem(settings.sandbox_bwrap)
        checks["sandbox"] = "ok" if problem is None else f"unavailable: {problem}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, 200 if ready else 503)

    app.include_router(networks_router)
    app.include_router(images_router)
    app.include_router(audits_router)
    app.include_router(users_router)
    app.include_router(dashboard_router)
    app.include_router(certificates_router)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes, slack=2**20)
    return app
