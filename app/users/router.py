"""``/api/v1/users`` (admins): create users (the token is shown once), list them, rotate or
revoke a user's token, disable or enable a user (each logged in the audit log)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from sqlalchemy import select

from app.auth import AuthFirst, SessionDep, create_user, require_role
from app.orm import User
from app.users import service

router = APIRouter(prefix="/api/v1/users", tags=["users"], route_class=AuthFirst)
Admin = Annotated[User, Depends(require_role("admin"))]


class UserCreate(BaseModel):
    name: str
    role: str


class UserOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime
    #: when an admin disabled the user (its token gets 401), else null
    disabled_at: datetime | None = None

    model_config = {"from_attributes": True}


class CreatedUser(UserOut):
    #: the bearer token, shown once (only its hash is stored)
    token: str


@router.post("", status_code=status.HTTP_201_CREATED)
def add_user(request: UserCreate, session: SessionDep, admin: Admin) -> CreatedUser:
    user, token = create_user(session, request.name, request.role, actor=admin.id)
    session.commit()
    return CreatedUser(**UserOut.model_validate(user).model_dump(), token=token)


@router.get("")
def list_users(session: SessionDep, _admin: Admin) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in session.scalars(select(User).order_by(User.name))]


_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing, unknown or revoked token, or a disabled user"},
    403: {"description": "not an admin"},
    404: {"description": "no such user"},
}


@router.post("/{user_id}/rotate-token", responses=_ERRORS)
def rotate_token(user_id: str, session: SessionDep, admin: Admin) -> CreatedUser:
    """A new token for the user (shown once); the previous one stops working."""
    user = service.find_user(session, user_id)
    token = service.rotate_token(session, user, actor=admin.id)
    session.commit()
    return CreatedUser(**UserOut.model_validate(user).model_dump(), token=token)


@router.post("/{user_id}/revoke-token", responses=_ERRORS)
def revoke_token(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    """The user's token stops working (401) until it is rotated."""
    user = service.find_user(session, user_id)
    service.revoke_token(session, user, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)


@router.post("/{user_id}/disable", responses=_ERRORS)
def disable_user(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    """The user's token gets 401 until the user is enabled again."""
    user = service.find_user(session, user_id)
    service.set_disabled(session, user, True, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)


@router.post("/{user_id}/enable", responses=_ERRORS)
def enable_user(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    user = service.find_user(session, user_id)
    service.set_disabled(session, user, False, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)
