"""Bearer API tokens (stored hashed) and roles: ``submitter`` sees its own models and audits,
``auditor`` sees all, ``admin`` also manages users."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import events
from app.db import sessions
from app.errors import Conflict, Forbidden, Invalid, Unauthorized
from app.orm import ROLES, User

__all__ = [
    "CurrentUser",
    "SessionDep",
    "create_user",
    "current_user",
    "require_role",
    "sees_everything",
    "token_hash",
    "user_for_token",
]

TOKEN_PREFIX = "ra_"
SessionDep = Annotated[Session, Depends(sessions)]
_bearer = HTTPBearer(
    auto_error=False, description="An API token from `recon-audit admin create-user`."
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user = User(name=name, role=role, token_hash=token_hash(token))
    session.add(user)
    session.flush()
    events.record(session, actor, "user.created", f"user:{user.id}", {"name": name, "role": role})
    return user, token


def user_for_token(session: Session, token: str | None) -> User | None:
    """The user a token belongs to (API bearer tokens and the dashboards' cookie)."""
    if not token:
        return None
    return session.scalars(select(User).where(User.token_hash == token_hash(token))).first()


def current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    user = user_for_token(session, credentials.credentials)
    if user is None:
        raise Unauthorized("invalid token")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def require_role(*roles: str) -> Callable[[User], User]:
    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise Forbidden(f"this needs the role {' or '.join(roles)}; you are {user.role}")
        return user

    return check


def sees_everything(user: User) -> bool:
    return user.role in ("auditor", "admin")
