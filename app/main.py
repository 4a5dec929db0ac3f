"""The FastAPI application: routers by domain, one error format, health and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import reconstruction
from app.audits.router import router as audits_router
from app.certificates.router import router as certificates_router
from app.dashboard.router import router as dashboard_router
from app.db import get_engine
from app.errors import AppError
from app.images.router import router as images_router
from app.networks.router import router as networks_router
from app.sandbox import jail_problem
from app.settings import get_settings
from app.users.router import router as users_router

__all__ = ["BodyLimit", "create_app"]


class BodyLimit:
    """Refuse request bodies above a size with 413 while they stream in (and at once when the
    declared Content-Length is too large), so an oversize upload is never spooled whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(self.limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse({"detail": f"request body exceeds the limit of {limit} bytes"}, 413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="recon-audit",
        version=reconstruction.__version__,
        description="Audits deep-learning image reconstruction for the instabilities of Antun "
        "et al. (PNAS 2020), beside stable compressed-sensing baselines.",
    )

    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            body["field"] = exc.field
        return JSONResponse(body, exc.status_code, headers=exc.headers or None)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            from worker.celery_app import app as celery

            with celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unavailable: {type(exc).__name__}"
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
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 2**20)
    return app
