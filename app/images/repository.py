from __future__ import annotations

from sqlalchemy import Select, or_
from sqlalchemy.orm import Session

from app.auth import visible_to
from app.orm import ImageSet, User
from app.pagination import Order

#: the list's order: newest first, the id breaking ties
ORDER: Order = ((ImageSet.created_at, True), (ImageSet.id, True))


def visible(session: Session, user: User, key: str) -> ImageSet | None:
    """An image set by id, or by name among the caller's own sets."""
    query = visible_to(user, ImageSet).where(
        or_(ImageSet.id == key, (ImageSet.name == key) & (ImageSet.owner_id == user.id))
    )
    return session.scalars(query).first()


def listing(user: User) -> Select[ImageSet]:
    """The image sets ``user`` may see, unordered."""
    return visible_to(user, ImageSet)
