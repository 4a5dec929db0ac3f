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
from app.errors import AppError
from app.orm import Audit, AuditEvent, AuditResult
from app.storage import Store

__all__ = [
    "GENESIS",
    "TERMINAL",
    "Anchor",
    "ChainReport",
    "Head",
    "chain_head",
    "record",
    "results_digest",
    "verify_chain",
]

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


def results_digest(results: Any) -> str:
    """SHA-256 of a results document's content (canonical JSON: sorted keys, no spaces), so
    the JSON the service serves can be checked against the hash its event recorded, however
    the database stored it."""
    canonical = json.dumps(results, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: the events that end an audit, and the status each leaves it in
TERMINAL = {
    "audit.succeeded": "succeeded",
    "audit.failed": "failed",
    "audit.cancelled": "cancelled",
}


def _recorded_content(details: dict[str, Any], store: Store | None) -> str | None:
    """The content hash of the results an ``audit.succeeded`` recorded: in the event (since it
    records it), else from the stored ``results.json`` its file hash names (older events)."""
    if "results_content_sha256" in details:
        return str(details["results_content_sha256"])
    if store is None or "results_sha256" not in details:
        return None
    try:
        return results_digest(
            json.loads(store.verified(str(details["results_sha256"])).read_text())
        )
    except (AppError, OSError, ValueError):
        return "unreadable"


def _succeeded_problem(
    session: Session, audit: Audit, details: dict[str, Any], store: Store | None
) -> str | None:
    if details.get("verdicts") != audit.verdicts:
        return f"audit {audit.id}: its verdicts differ from those its audit.succeeded recorded"
    result = session.get(AuditResult, audit.id)
    if result is None:
        return f"audit {audit.id} succeeded in the log but its results were deleted"
    if result.results_sha256 != details.get("results_sha256"):
        return f"audit {audit.id}: its results differ from those its audit.succeeded recorded"
    recorded = _recorded_content(details, store)
    if recorded is not None and results_digest(result.results) != recorded:
        return (
            f"audit {audit.id}: the results it serves differ from those its audit.succeeded "
            "recorded (their content was edited)"
        )
    return None


def _record_problem(session: Session, store: Store | None) -> str | None:
    """Every audit the log created still has its row; every finished audit has the status its
    last terminal event gave it; a succeeded one the verdicts and results (their content, as
    served) its ``audit.succeeded`` recorded; no audit has verdicts without that event (rows
    changed, deleted or made up behind the service's back, their triggers dropped, show)."""
    created: set[str] = set()
    terminal: dict[str, tuple[str, dict[str, Any]]] = {}
    query = select(AuditEvent).where(AuditEvent.action.in_(["audit.created", *TERMINAL]))
    for event in session.scalars(query.order_by(AuditEvent.id)):
        audit_id = event.subject.removeprefix("audit:")
        if event.action == "audit.created":
            created.add(audit_id)
        else:
            terminal[audit_id] = (event.action, event.details)
    for audit_id in sorted(created | set(terminal)):
        audit = session.get(Audit, audit_id)
        if audit is None:
            return f"audit {audit_id} is in the log but its row was deleted"
        if audit_id not in terminal:
            continue
        action, details = terminal[audit_id]
        if audit.status != TERMINAL[action]:
            return (
                f"audit {audit_id} is {audit.status} but the log recorded it "
                f"{TERMINAL[action]} ({action})"
            )
        if action == "audit.succeeded" and (
            problem := _succeeded_problem(session, audit, details, store)
        ):
            return problem
    for audit in session.scalars(select(Audit).where(Audit.verdicts.is_not(None))):
        if terminal.get(audit.id, ("",))[0] != "audit.succeeded":
            return f"audit {audit.id} has verdicts but the log has no audit.succeeded event"
    return None


def verify_chain(
    session: Session, anchors: Iterable[Anchor] = (), store: Store | None = None
) -> ChainReport:
    """Check each event's hash and link, then the chain against ``anchors`` (the event at each
    anchor's position must be the anchored head: a recomputed chain fails, and so does one
    shorter than an anchor), then the audits against their events (:func:`_record_problem`;
    ``store``: where older events' results files are, to check the results' content)."""
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
    problem = _record_problem(session, store)
    return ChainReport(count, problem is None, problem, checked)
