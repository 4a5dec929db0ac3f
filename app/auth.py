"""Bearer API tokens (stored hashed) and roles: ``submitter`` sees its own models and audits,
``auditor`` sees all, ``admin`` also manages users. A rotated or revoked token, and a disabled
user's, get 401. Routes of :class:`AuthFirst` check the caller before their body is read."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app import events
from app.db import sessions
from app.errors import Conflict, Forbidden, Invalid, Unauthorized
from app.orm import ROLES, Audit, ImageSet, Network, User

__all__ = [
    "AuthFirst",
    "CurrentUser",
    "SessionDep",
    "create_user",
    "current_user",
    "new_token",
    "require_role",
    "sees_everything",
    "token_hash",
    "user_for_token",
    "visible_to",
]

#: the resources a user owns (``owner_id``), which :func:`visible_to` shows
Owned = TypeVar("Owned", Network, ImageSet, Audit)
TOKEN_PREFIX = "ra_"
SessionDep = Annotated[Session, Depends(sessions)]
_bearer = HTTPBearer(
    auto_error=False, description="An API token from `recon-audit admin create-user`."
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_user(
    session: Session, name: str, role: str, *, actor: str = "admin"
) -> tuple[User, str]:
    """Create a user and return it with its token (shown once; only its hash is stored)."""
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}", field="role")
    if not name or len(name) > 100:
        raise Invalid("name must have 1 to 100 characters", field="name")
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise Conflict(f"a user named {name!r} exists")
    token = new_token()
    user = User(name=name, role=role, token_hash=token_hash(token))
    session.add(user)
    session.flush()
    events.record(session, actor, "user.created", f"user:{user.id}", {"name": name, "role": role})
    return user, token


def _holder(session: Session, token: str) -> User | None:
    """The user whose current token this is (disabled or not)."""
    return session.scalars(select(User).where(User.token_hash == token_hash(token))).first()


def user_for_token(session: Session, token: str | None) -> User | None:
    """The user a token belongs to (API bearer tokens and the dashboards' cookie); ``None`` for
    an unknown, rotated or revoked token and for a disabled user."""
    user = _holder(session, token) if token else None
    if user is None or user.disabled_at is not None:
        return None
    return user


def current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    found = _holder(session, credentials.credentials)
    if found is None:
        raise Unauthorized("invalid token (unknown, rotated or revoked)")
    if found.disabled_at is not None:
        raise Unauthorized(f"user {found.name} is disabled")
    return found


CurrentUser = Annotated[User, Depends(current_user)]


def require_role(*roles: str) -> Callable[[User], User]:
    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}; you are {user.role}")
        return user

    return check


def sees_everything(user: User) -> bool:
    return user.role in ("auditor", "admin")


def visible_to(user: User, kind: type[Owned]) -> Select[Owned]:
    """``select(kind)`` narrowed to the rows ``user`` may see: every row for an auditor or an
    admin, a submitter's own otherwise (the others' read as missing: 404, and are not listed).
    The one visibility rule of the models, image sets and audits, for single reads and lists
    alike (one query either way: the rule is a ``WHERE``, not a second read)."""
    query = select(kind)
    return query if sees_everything(user) else query.where(kind.owner_id == user.id)


def _needs_caller(dependant: Dependant) -> bool:
    return dependant.call is current_user or any(_needs_caller(d) for d in dependant.dependencies)


class AuthFirst(APIRoute):
    """A route that authenticates (its dependencies on :func:`current_user`, role checks
    included) *before* its body is read: FastAPI reads and spools a multipart body before it
    solves the dependencies, so an upload with a missing or bad token, or the wrong role, would
    otherwise stream in whole before its 401/403. The route's own dependencies run again after
    the body, as usual. A route without a body (the pollers' GETs) authenticates once."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        gate = Dependant(
            dependencies=[d for d in self.dependant.dependencies if _needs_caller(d)],
            path=self.path_format,
        )
        if not gate.dependencies or self.body_field is None:
            return handler  # nothing to authenticate, or no body to hold back: one pass

        async def authenticated_first(request: Request) -> Response:
            async with AsyncExitStack() as stack:
                solved = await solve_dependencies(
                    request=request,
                    dependant=gate,
                    dependency_overrides_provider=request.scope.get("app"),
                    async_exit_stack=stack,
                    embed_body_fields=False,
                )
            # the gate's session is done: give its connection back while the body streams
            for value in solved.dependency_cache.values():
                if isinstance(value, Session):
                    value.rollback()
            return await handler(request)

        return authenticated_first
