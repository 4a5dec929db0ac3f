"""The API's contract shared by every router: the one error body (:class:`ErrorOut`) and its
OpenAPI entries (:func:`errors`), and conditional GETs (an ETag, ``If-None-Match`` -> 304)."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Response, status
from pydantic import BaseModel, Field

__all__ = ["ErrorOut", "conditional", "errors"]

_MEANING = {
    400: "a body that cannot be parsed (not JSON, not multipart)",
    401: "missing or invalid bearer token",
    403: "the caller's role may not do this",
    404: "unknown, or not visible to the caller",
    409: "conflicts with the current state",
    413: "the request body or an upload exceeds its limit",
    415: "an unsupported file format",
    422: "invalid input (a parameter, the body or an uploaded file's content)",
    429: "too many requests",
    503: "unavailable here and now (e.g. the jail for models)",
}


class ErrorOut(BaseModel):
    """Every error the API returns."""

    detail: str = Field(description="What was wrong, in one sentence.")
    field: str | None = Field(
        description="The input at fault (a parameter, a body field, an upload), when known."
    )


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route returns (all as :class:`ErrorOut`)."""
    return {code: {"model": ErrorOut, "description": _MEANING[code]} for code in codes}


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` against our (strong) ETag, compared weakly as RFC 9110 13.1.2 says."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def conditional(model: BaseModel, if_none_match: str | None) -> Response:
    """``model`` as JSON with its ETag, or 304 Not Modified when the client holds it already,
    so pollers of a status pay no body when nothing changed."""
    body = model.model_dump_json().encode()
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
