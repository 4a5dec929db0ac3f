"""Users' tokens and access: rotate a token (a new one, shown once; the old one stops
working), revoke it (none works until rotated), disable and enable a user (a disabled user's
token gets 401). Each is an event in the audit log. The last active admin can neither be
disabled nor lose its token (409): somebody must be left to manage users."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app import events
from app.auth import new_token, token_hash
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.orm import User

__all__ = ["find_user", "revoke_token", "rotate_token", "set_disabled"]


def find_user(session: Session, key: str) -> User:
    """A user by id or by name (404 when neither)."""
    user = session.get(User, key) or session.scalars(select(User).where(User.name == key)).first()
    if user is None:
        raise NotFound(f"no user {key}")
    return user


def rotate_token(session: Session, user: User, *, actor: str) -> str:
    """A new token for ``user`` (returned once); its previous token stops working."""
    token = new_token()
    user.token_hash = token_hash(token)
    events.record(session, actor, "user.token_rotated", f"user:{user.id}", {"name": user.name})
    session.flush()
    return token


def _keep_an_admin(session: Session, user: User, change: str) -> None:
    """409 when ``change`` would leave no active admin holding a token (nobody could manage
    users through the API again). The admins' rows are locked first (a write that changes
    nothing), so two admins disabling each other at once cannot both succeed."""
    if user.role != "admin" or user.disabled_at is not None:
        return
    session.execute(
        update(User).where(User.role == "admin").values(role=User.role),
        execution_options={"synchronize_session": False},
    )
    others = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == "admin", User.disabled_at.is_(None), User.id != user.id)
    )
    if not others:
        raise Conflict(
            f"{user.name} is the last active admin: {change} would leave nobody to manage "
            "users; make another user an admin first"
        )


def revoke_token(session: Session, user: User, *, actor: str) -> None:
    """``user``'s token stops working; the stored hash becomes that of a secret nobody holds,
    until the token is rotated (409 for the last active admin)."""
    _keep_an_admin(session, user, "revoking its token")
    user.token_hash = token_hash(secrets.token_urlsafe(32))
    events.record(session, actor, "user.token_revoked", f"user:{user.id}", {"name": user.name})
    session.flush()


def set_disabled(session: Session, user: User, disabled: bool, *, actor: str) -> None:
    """Disable ``user`` (every request with its token gets 401; 409 for the last active admin)
    or enable it again."""
    if disabled == (user.disabled_at is not None):
        return
    if disabled:
        _keep_an_admin(session, user, "disabling it")
    user.disabled_at = utcnow() if disabled else None
    action = "user.disabled" if disabled else "user.enabled"
    events.record(session, actor, action, f"user:{user.id}", {"name": user.name})
    session.flush()
