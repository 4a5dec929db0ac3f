from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.auth import sees_everything
from app.orm import ImageSet, User


def visible(session: Session, user: User, key: str) -> ImageSet | None:
    """An image set by id, or by name among the caller's own sets."""
    query = select(ImageSet).where(
        or_(ImageSet.id == key, (ImageSet.name == key) & (ImageSet.owner_id == user.id))
    )
    found = session.scalars(query).first()
    if found is None or not (sees_everything(user) or found.owner_id == user.id):
        return None
    return found


def listed(session: Session, user: User) -> Sequence[ImageSet]:
    query = select(ImageSet).order_by(ImageSet.created_at.desc())
    if not sees_everything(user):
        query = query.where(ImageSet.owner_id == user.id)
    return session.scalars(query).all()
