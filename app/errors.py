"""The service's one exception hierarchy: each error carries its HTTP status and a message that
says what was wrong; the API turns it into ``{"detail": message}`` (and ``field`` when known)."""

from __future__ import annotations

__all__ = [
    "AppError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMedia",
]


class AppError(Exception):
    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        #: HTTP headers the response carries (e.g. ``Retry-After``)
        self.headers: dict[str, str] = {}


class Invalid(AppError):
    """The request is well-formed but its content is wrong (a manifest field, a protocol)."""

    status_code = 422


class NotFound(AppError):
    """Unknown id, or one the caller may not see (never reveals which)."""

    status_code = 404


class Unauthorized(AppError):
    status_code = 401


class Forbidden(AppError):
    status_code = 403


class TooLarge(AppError):
    status_code = 413


class UnsupportedMedia(AppError):
    status_code = 415


class Conflict(AppError):
    status_code = 409


class TooManyRequests(AppError):
    """A per-user limit is reached; ``retry_after``: the seconds to wait (``Retry-After``)."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.headers["Retry-After"] = str(retry_after)


class Unavailable(AppError):
    """The service cannot do this here and now (e.g. the jail for untrusted models is missing)."""

    status_code = 503
