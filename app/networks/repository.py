from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, defer

from app.auth import sees_everything
from app.orm import Network, User
from app.pagination import Order

#: the lists' order: newest first, the id breaking ties
ORDER: Order = ((Network.created_at, True), (Network.id, True))


def by_owner_and_hash(session: Session, owner_id: str, sha256: str) -> Network | None:
    return session.scalars(
        select(Network).where(Network.owner_id == owner_id, Network.sha256 == sha256)
    ).first()


def visible(session: Session, user: User, network_id: str) -> Network | None:
    network = session.get(Network, network_id)
    if network is None or not (sees_everything(user) or network.owner_id == user.id):
        return None
    return network


def listing(user: User) -> Select[Network]:
    """The models ``user`` may see, unordered, without their big JSON fields (the manifest,
    the files, the inspection summary: a list shows :class:`NetworkSummary`)."""
    query = select(Network).options(
        defer(Network.manifest), defer(Network.files), defer(Network.summary)
    )
    if not sees_everything(user):
        query = query.where(Network.owner_id == user.id)
    return query


def listed(session: Session, user: User) -> Sequence[Network]:
    query = select(Network).order_by(*(column.desc() for column, _ in ORDER))
    if not sees_everything(user):
        query = query.where(Network.owner_id == user.id)
    return session.scalars(query).all()
