"""The append-only audit log: who did what, when, each event carrying the hash of the previous
one, so any edit or removal breaks the chain (``recon-audit admin verify-events``). A rewrite
of the chain from an edited event on, or the removal of its last events, is caught against the
heads anchored outside the database (:mod:`app.checkpoints`: signed checkpoint files, and the
head each certificate carries); a finished audit's verdicts are bound to its
``audit.succeeded`` event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.db import utcnow
from app.orm import Audit, AuditEvent, AuditResult

__all__ = ["GENESIS", "Anchor", "ChainReport", "Head", "chain_head", "record", "verify_chain"]

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
class Head:
    """The chain's length and the hash of its last event (no events: :data:`GENESIS`)."""

    events: int
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "head": self.hash}


@dataclass(frozen=True)
class Anchor:
    """A head recorded outside the database; ``source`` says where (a checkpoint file, a
    certificate), ``problem`` is set when the anchor itself cannot be trusted."""

    head: Head
    source: str
    problem: str | None = None


def chain_head(session: Session) -> Head:
    """The chain's current head."""
    hashes = session.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    last = hashes.first()
    count = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    return Head(int(count), last or GENESIS)


@dataclass(frozen=True)
class ChainReport:
    events: int
    valid: bool
    problem: str | None = None
    #: heads anchored outside the database that were checked
    anchors: int = 0


def _verdicts_problem(session: Session) -> str | None:
    """Every finished audit's verdicts and results are those its ``audit.succeeded`` event
    recorded (an audit row changed behind the service's back, its trigger dropped, shows)."""
    logged = {
        event.subject.removeprefix("audit:"): event.details
        for event in session.scalars(
            select(AuditEvent).where(AuditEvent.action == "audit.succeeded")
        )
    }
    for audit in session.scalars(select(Audit).where(Audit.status == "succeeded")):
        details = logged.get(audit.id)
        if details is None:
            if audit.verdicts is None:
                continue
            return f"audit {audit.id} has verdicts but the log has no audit.succeeded event"
        if details.get("verdicts") != audit.verdicts:
            return f"audit {audit.id}: its verdicts differ from those its audit.succeeded recorded"
        result = session.get(AuditResult, audit.id)
        if result is not None and result.results_sha256 != details.get("results_sha256"):
            return f"audit {audit.id}: its results differ from those its audit.succeeded recorded"
    return None


def verify_chain(session: Session, anchors: Iterable[Anchor] = ()) -> ChainReport:
    """Check each event's hash and link, then the chain against ``anchors`` (the event at each
    anchor's position must be the anchored head: a recomputed chain fails, and so does one
    shorter than an anchor), then the finished audits against their events."""
    previous = GENESIS
    hashes: list[str] = []
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        count = len(hashes) + 1
        if event.prev_hash != previous:
            return ChainReport(count, False, f"event {event.id}: previous hash does not match")
        if _digest(event) != event.hash:
            return ChainReport(count, False, f"event {event.id}: content does not match its hash")
        previous = event.hash
        hashes.append(event.hash)
    count, checked = len(hashes), 0
    for anchor in anchors:
        checked += 1
        if anchor.problem is not None:
            return ChainReport(count, False, anchor.problem, checked)
        position = anchor.head.events
        if position > count:
            return ChainReport(
                count,
                False,
                f"the chain has {count} events but {anchor.source} recorded {position}: "
                "events were removed",
                checked,
            )
        at = hashes[position - 1] if position else GENESIS
        if at != anchor.head.hash:
            return ChainReport(
                count,
                False,
                f"event {position} is not the head {anchor.source} recorded: "
                "the chain was rewritten",
                checked,
            )
    problem = _verdicts_problem(session)
    return ChainReport(count, problem is None, problem, checked)
