"""The append-only audit log: who did what, when, each event carrying the hash of the previous
one, so any edit or removal breaks the chain (``recon-audit admin verify-events``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.db import utcnow
from app.orm import AuditEvent

__all__ = ["GENESIS", "ChainReport", "record", "verify_chain"]

GENESIS = "0" * 64


def _utc_text(at: datetime) -> str:
    """The timestamp as naive UTC text (SQLite returns naive datetimes, PostgreSQL aware ones)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat()


def _digest(event: AuditEvent) -> str:
    body = {
        "at": _utc_text(event.at),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    session: Session, actor: str, action: str, subject: str, details: dict[str, Any] | None = None
) -> AuditEvent:
    """Append an event in the caller's transaction (serialised: one chain)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7267001)"))
    last = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).first()
    event = AuditEvent(
        at=utcnow(),
        actor=actor,
        action=action,
        subject=subject,
        details=details or {},
        prev_hash=last.hash if last else GENESIS,
    )
    event.hash = _digest(event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class ChainReport:
    events: int
    valid: bool
    problem: str | None = None


def verify_chain(session: Session) -> ChainReport:
    previous = GENESIS
    count = 0
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        count += 1
        if event.prev_hash != previous:
            return ChainReport(count, False, f"event {event.id}: previous hash does not match")
        if _digest(event) != event.hash:
            return ChainReport(count, False, f"event {event.id}: content does not match its hash")
        previous = event.hash
    return ChainReport(count, True)
