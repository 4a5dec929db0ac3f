from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sqlalchemy.sql.base import ExecutableOption

from app.auth import visible_to
from app.orm import Audit, AuditResult, AuditShard, User
from app.pagination import Order

#: the lists' order: newest first, the id breaking ties
ORDER: Order = ((Audit.created_at, True), (Audit.id, True))


def visible(
    session: Session, user: User, audit_id: str, *options: ExecutableOption, lock: bool = False
) -> Audit | None:
    """An audit ``user`` may see, by id (one indexed read; ``options``: e.g. deferred
    columns); ``lock``: its row locked (``FOR UPDATE``), with the values read under the lock."""
    query = visible_to(user, Audit).where(Audit.id == audit_id).options(*options)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).first()


def status_of(session: Session, user: User, audit_id: str) -> Audit | None:
    """An audit for its status (one indexed read, without the protocol's text)."""
    return visible(session, user, audit_id, defer(Audit.protocol_yaml))


def listing(user: User, status: str | None = None) -> Select[Audit]:
    """The audits ``user`` may see (optionally in one status), unordered."""
    query = visible_to(user, Audit).options(defer(Audit.protocol_yaml))
    return query.where(Audit.status == status) if status else query


def listed(session: Session, user: User, status: str | None = None) -> Sequence[Audit]:
    query = listing(user, status).order_by(*(column.desc() for column, _ in ORDER))
    return session.scalars(query).all()


def result_of(session: Session, audit_id: str) -> AuditResult | None:
    return session.get(AuditResult, audit_id)


def shards(session: Session, audit_id: str) -> list[AuditShard]:
    """A fanned-out audit's shards (one per test, or per test and unit of its images)."""
    return list(session.scalars(select(AuditShard).where(AuditShard.audit_id == audit_id)))


def shard(session: Session, audit_id: str, test: str) -> AuditShard | None:
    """The shard of ``audit_id`` that runs ``test``."""
    query = select(AuditShard).where(AuditShard.audit_id == audit_id, AuditShard.test == test)
    return session.scalars(query).first()


def store_result(
    session: Session, audit_id: str, results: dict[str, Any], files: dict[str, str]
) -> bool:
    """Store an audit's results once (the table refuses a second row): whether this call
    stored them (False: another delivery did first, and the session is rolled back)."""
    try:
        session.add(
            AuditResult(
                audit_id=audit_id,
                results=results,
                results_sha256=files["results.json"],
                files=files,
            )
        )
        session.flush()
    except IntegrityError:
        session.rollback()
        return False
    return True


def running_audits(session: Session, owner_id: str) -> int:
    """How many of a user's audits are running."""
    query = select(func.count()).where(Audit.owner_id == owner_id, Audit.status == "running")
    return int(session.scalar(query) or 0)
