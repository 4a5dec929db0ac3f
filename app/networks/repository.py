from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import sees_everything
from app.orm import Network, User


def by_owner_and_hash(session: Session, owner_id: str, sha256: str) -> Network | None:
    return session.scalars(
        select(Network).where(Network.owner_id == owner_id, Network.sha256 == sha256)
    ).first()


def visible(session: Session, user: User, network_id: str) -> Network | None:
    network = session.get(Network, network_id)
    if network is None or not (sees_everything(user) or network.owner_id == user.id):
        return None
    return network


def listed(session: Session, user: User) -> Sequence[Network]:
    query = select(Network).order_by(Network.created_at.desc())
    if not sees_everything(user):
        query = query.where(Network.owner_id == user.id)
    return session.scalars(query).all()
