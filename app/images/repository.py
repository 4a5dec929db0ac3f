from __future__ import annotations

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from app.auth import sees_everything
from app.orm import ImageSet, User
from app.pagination import Order

#: the list's order: newest first, the id breaking ties
ORDER: Order = ((ImageSet.created_at, True), (ImageSet.id, True))


def visible(session: Session, user: User, key: str) -> ImageSet | None:
    """An image set by id, or by name among the caller's own sets."""
    query = select(ImageSet).where(
        or_(ImageSet.id == key, (ImageSet.name == key) & (ImageSet.owner_id == user.id))
    )
    found = session.scalars(query).first()
    if found is None or not (sees_everything(user) or found.owner_id == user.id):
        return None
    return found


def listing(user: User) -> Select[ImageSet]:
    """The image sets ``user`` may see, unordered."""
    query = select(ImageSet)
    if not sees_everything(user):
        query = query.where(ImageSet.owner_id == user.id)
    return query
