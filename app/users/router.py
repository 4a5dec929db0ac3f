"""``/api/v1/users`` (admins): create users (the token is shown once), list them, rotate or
revoke a user's token, disable or enable a user (each logged in the audit log)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from app.api import errors
from app.auth import AuthFirst, SessionDep, create_user, require_role
from app.orm import Role, User
from app.pagination import HEADERS, Order, Paged
from app.users import service

router = APIRouter(prefix="/api/v1/users", tags=["users"], route_class=AuthFirst)
Admin = Annotated[User, Depends(require_role("admin"))]


#: the list's order: by name (unique)
ORDER: Order = ((User.name, False),)


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role


class UserOut(BaseModel):
    id: str
    name: str
    role: Role
    created_at: AwareDatetime
    #: when an admin disabled the user (its token gets 401), else null
    disabled_at: AwareDatetime | None = None

    model_config = {"from_attributes": True}


class CreatedUser(UserOut):
    #: the bearer token, shown once (only its hash is stored)
    token: str


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses=errors(400, 401, 403, 409, 413, 422)
)
def add_user(request: UserCreate, session: SessionDep, admin: Admin) -> CreatedUser:
    user, token = create_user(session, request.name, request.role, actor=admin.id)
    session.commit()
    return CreatedUser(**UserOut.model_validate(user).model_dump(), token=token)


@router.get("", responses={200: {"headers": HEADERS}, **errors(401, 403, 422)})
def list_users(
    session: SessionDep,
    _admin: Admin,
    pages: Paged,
) -> list[UserOut]:
    """The users by name, a page at a time."""
    users = pages.rows(session, select(User), ORDER)
    return [UserOut.model_validate(u) for u in users]


_ERRORS = errors(401, 403, 404)


@router.post("/{user_id}/rotate-token", responses=_ERRORS)
def rotate_token(user_id: str, session: SessionDep, admin: Admin) -> CreatedUser:
    """A new token for the user (shown once); the previous one stops working."""
    user = service.find_user(session, user_id)
    token = service.rotate_token(session, user, actor=admin.id)
    session.commit()
    return CreatedUser(**UserOut.model_validate(user).model_dump(), token=token)


@router.post("/{user_id}/revoke-token", responses=errors(401, 403, 404, 409))
def revoke_token(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    """The user's token stops working (401) until it is rotated; 409 for the last active
    admin."""
    user = service.find_user(session, user_id)
    service.revoke_token(session, user, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)


@router.post("/{user_id}/disable", responses=errors(401, 403, 404, 409))
def disable_user(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    """The user's token gets 401 until the user is enabled again; 409 for the last active
    admin."""
    user = service.find_user(session, user_id)
    service.set_disabled(session, user, True, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)


@router.post("/{user_id}/enable", responses=_ERRORS)
def enable_user(user_id: str, session: SessionDep, admin: Admin) -> UserOut:
    """The user can sign in again with their token."""
    user = service.find_user(session, user_id)
    service.set_disabled(session, user, False, actor=admin.id)
    session.commit()
    return UserOut.model_validate(user)
