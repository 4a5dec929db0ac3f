from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, defer

from app.auth import sees_everything
from app.orm import Audit, AuditResult, User
from app.pagination import Order

#: the lists' order: newest first, the id breaking ties
ORDER: Order = ((Audit.created_at, True), (Audit.id, True))


def visible(session: Session, user: User, audit_id: str) -> Audit | None:
    audit = session.get(Audit, audit_id)
    if audit is None or not (sees_everything(user) or audit.owner_id == user.id):
        return None
    return audit


def status_of(session: Session, user: User, audit_id: str) -> Audit | None:
    """An audit for its status (one indexed read, without the protocol's text)."""
    audit = session.scalars(
        select(Audit).where(Audit.id == audit_id).options(defer(Audit.protocol_yaml))
    ).first()
    if audit is None or not (sees_everything(user) or audit.owner_id == user.id):
        return None
    return audit


def listing(user: User, status: str | None = None) -> Select[Audit]:
    """The audits ``user`` may see (optionally in one status), unordered."""
    query = select(Audit).options(defer(Audit.protocol_yaml))
    if not sees_everything(user):
        query = query.where(Audit.owner_id == user.id)
    if status:
        query = query.where(Audit.status == status)
    return query


def listed(session: Session, user: User, status: str | None = None) -> Sequence[Audit]:
    query = listing(user, status).order_by(*(column.desc() for column, _ in ORDER))
    return session.scalars(query).all()


def result_of(session: Session, audit_id: str) -> AuditResult | None:
    return session.get(AuditResult, audit_id)
