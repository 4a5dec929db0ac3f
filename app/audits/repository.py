from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import sees_everything
from app.orm import Audit, AuditResult, User


def visible(session: Session, user: User, audit_id: str) -> Audit | None:
    audit = session.get(Audit, audit_id)
    if audit is None or not (sees_everything(user) or audit.owner_id == user.id):
        return None
    return audit


def listed(session: Session, user: User, status: str | None = None) -> Sequence[Audit]:
    query = select(Audit).order_by(Audit.created_at.desc())
    if not sees_everything(user):
        query = query.where(Audit.owner_id == user.id)
    if status:
        query = query.where(Audit.status == status)
    return session.scalars(query).all()


def result_of(session: Session, audit_id: str) -> AuditResult | None:
    return session.get(AuditResult, audit_id)
