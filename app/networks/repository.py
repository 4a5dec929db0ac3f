from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, defer

from app.auth import visible_to
from app.orm import Network, User
from app.pagination import Order

#: the lists' order: newest first, the id breaking ties
ORDER: Order = ((Network.created_at, True), (Network.id, True))


def by_owner_and_hash(session: Session, owner_id: str, sha256: str) -> Network | None:
    return session.scalars(
        select(Network).where(Network.owner_id == owner_id, Network.sha256 == sha256)
    ).first()


def visible(session: Session, user: User, network_id: str) -> Network | None:
    return session.scalars(visible_to(user, Network).where(Network.id == network_id)).first()


def listing(user: User) -> Select[Network]:
    """The models ``user`` may see, unordered, without their big JSON fields (the manifest,
    the files, the inspection summary: a list shows :class:`NetworkSummary`)."""
    return visible_to(user, Network).options(
        defer(Network.manifest), defer(Network.files), defer(Network.summary)
    )


def listed(session: Session, user: User) -> Sequence[Network]:
    """The models ``user`` may see, whole, newest first (the dashboards' lists)."""
    query = visible_to(user, Network).order_by(*(column.desc() for column, _ in ORDER))
    return session.scalars(query).all()
