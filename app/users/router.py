"""``/api/v1/users`` (admins): create users (the token is shown once) and list them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from sqlalchemy import select

from app.auth import SessionDep, create_user, require_role
from app.orm import User

router = APIRouter(prefix="/api/v1/users", tags=["users"])
Admin = Annotated[User, Depends(require_role("admin"))]


class UserCreate(BaseModel):
    name: str
    role: str


class UserOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime

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
