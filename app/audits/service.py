"""Audits: created queued, stored *unsent* in the transaction that creates them and enqueued only
after that commit (an outbox: :func:`send`; what a failing broker left unsent, the workers'
sweep sends, :func:`app.audits.lifecycle.requeue_interrupted`); read back with their progress,
verdicts and artefacts. A broker that cannot be reached refuses the creation (503 with
``Retry-After``), and nothing is stored."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app import events, queue
from app.audits import repository
from app.audits.schemas import AuditCreate, AuditOut, Progress
from app.certificates.service import current_pdf
from app.db import utcnow
from app.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests, Unavailable
from app.images import repository as images
from app.images.service import BUILTIN_SET
from app.networks import repository as networks
from app.orm import ACTIVE, FINISHED, Audit, AuditResult, User
from app.settings import Settings
from app.storage import Store
from reconstruction.protocols import (
    BUILTIN,
    ProtocolError,
    is_builtin,
    load_protocol,
    parse_protocol,
    shown_name,
)

__all__ = [
    "BrokerUnavailable",
    "artefact",
    "as_out",
    "cancel_audit",
    "create_audit",
    "mark_sent",
    "record_download",
    "send",
]

logger = logging.getLogger(__name__)


class BrokerUnavailable(Unavailable):
    """The task queue cannot be reached: 503 with ``Retry-After``."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


def _check_active_limit(session: Session, settings: Settings, user: User) -> None:
    """429 when ``user`` has ``max_active_audits`` queued or running already.

    Concurrent requests of one user are counted one after the other: before the count, a write
    to the user's row (it changes nothing) takes that row's lock on PostgreSQL and the
    database's write lock on SQLite (where ``FOR UPDATE`` is a no-op and pysqlite begins a
    transaction only at its first write), both held until the insert of the audit commits.

    An audit counts once it is sent, or while its send may still be under way (created within
    ``outbox_grace_seconds``: another request's audit, committed but not yet marked sent); one
    whose send failed (the broker went away after its commit) does not, until the sweep sent
    it."""
    limit = settings.max_active_audits
    if limit <= 0:
        return
    session.execute(
        update(User).where(User.id == user.id).values(role=User.role),
        execution_options={"synchronize_session": False},
    )
    active = session.scalar(
        select(func.count())
        .select_from(Audit)
        .where(
            Audit.owner_id == user.id,
            Audit.status.in_(ACTIVE),
            or_(
                Audit.enqueued.is_(True),
                Audit.status == "running",
                Audit.created_at > utcnow() - timedelta(seconds=settings.outbox_grace_seconds),
            ),
        )
    )
    if (active or 0) >= limit:
        raise TooManyRequests(
            f"you have {active} audits queued or running, the most allowed at once is {limit}; "
            "wait for one to finish, or cancel one",
            retry_after=settings.active_audits_retry_after,
        )


def create_audit(session: Session, settings: Settings, user: User, request: AuditCreate) -> Audit:
    network = networks.visible(session, user, request.model_id)
    if network is None:
        raise NotFound(f"no model {request.model_id}")
    try:
        if request.protocol in BUILTIN:
            protocol = load_protocol(request.protocol)
        else:
            protocol = parse_protocol(request.protocol, "inline protocol")
        protocol.check_image_size(network.manifest["image_size"])
    except ProtocolError as exc:
        raise Invalid(str(exc), field="protocol") from exc
    image_set = BUILTIN_SET
    if request.image_set != BUILTIN_SET:
        found = images.visible(session, user, request.image_set)
        if found is None:
            raise NotFound(f"no image set {request.image_set}")
        image_set = found.id
    problem = queue.broker_problem()
    if problem is not None:
        raise BrokerUnavailable(
            f"the task queue cannot be reached ({problem}); nothing was stored: send the "
            "audit again shortly",
            retry_after=settings.broker_retry_after,
        )
    _check_active_limit(session, settings, user)
    audit = Audit(
        owner_id=user.id,
        network_id=network.id,
        protocol_name=protocol.shown_name,
        protocol_version=protocol.version,
        protocol_sha256=protocol.sha256,
        protocol_yaml=protocol.to_yaml(),
        image_set=image_set,
        status="queued",
        enqueued=False,
    )
    session.add(audit)
    session.flush()
    events.record(
        session,
        user.id,
        "audit.created",
        f"audit:{audit.id}",
        {"model": network.id, "protocol": protocol.identity(), "image_set": image_set},
    )
    session.commit()
    return audit


def send(session: Session, audit_id: str) -> bool:
    """Hand a stored audit's task to the broker and mark it sent; False (logged) when the
    broker failed, which leaves it to the workers' sweep."""
    try:
        queue.enqueue_audit(audit_id)
    except Exception:
        logger.warning("audit %s could not be sent; the sweep sends it", audit_id, exc_info=True)
        return False
    mark_sent(session, audit_id)
    session.commit()
    return True


def mark_sent(session: Session, audit_id: str) -> None:
    """An audit's task was sent (a row finished meanwhile is left alone: it is immutable)."""
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.enqueued.is_(False), Audit.status.in_(ACTIVE))
        .values(enqueued=True)
        .execution_options(synchronize_session=False)
    )


def cancel_audit(session: Session, user: User, audit_id: str) -> Audit:
    """Cancel a queued or running audit (its owner, or an admin): it ends ``cancelled`` at once
    (an ``audit.cancelled`` event); a worker running it stops at its next progress check, and
    its queued tasks find it finished. 409 when it is finished already."""
    audit = repository.visible(session, user, audit_id, lock=True)
    if audit is None:
        raise NotFound(f"no audit {audit_id}")
    if audit.owner_id != user.id and user.role != "admin":
        raise Forbidden("only the audit's owner or an admin may cancel it")
    if audit.status in FINISHED:
        raise Conflict(f"audit {audit_id} is finished already (status: {audit.status})")
    previous = audit.status
    audit.status, audit.finished_at = "cancelled", utcnow()
    audit.error = f"cancelled by {user.name}"
    events.record(
        session, user.id, "audit.cancelled", f"audit:{audit_id}", {"status_before": previous}
    )
    session.commit()
    return audit


def artefact(
    session: Session,
    store: Store,
    result: AuditResult,
    name: str,
    *,
    version: Literal["current", "issued"] = "current",
) -> tuple[str, Path]:
    """A finished audit's stored artefact, re-verified: ``(sha256, path)``. ``report.pdf`` is
    the certificate: its approved version once an auditor approved it (``version="issued"``:
    the one the service issued)."""
    if name == "report.pdf" and version == "current":
        sha = current_pdf(session, result)
    else:
        sha = result.files.get(name)
    if sha is None:
        raise NotFound(f"no artefact {name}")
    return str(sha), store.verified(str(sha))


def record_download(session: Session, user: User, audit_id: str, name: str, sha256: str) -> None:
    """Downloads of the results and the certificate go into the audit log."""
    details = {"what": "results"} if name == "results.json" else {"what": name, "sha256": sha256}
    events.record(session, user.id, "audit.downloaded", f"audit:{audit_id}", details)
    session.commit()


def as_out(audit: Audit) -> AuditOut:
    return AuditOut(
        id=audit.id,
        model_id=audit.network_id,
        owner_id=audit.owner_id,
        protocol={
            # shown_name again: records stored before built-in names were reserved
            "name": shown_name(audit.protocol_name, audit.protocol_sha256),
            "version": audit.protocol_version,
            "sha256": audit.protocol_sha256,
            "builtin": is_builtin(audit.protocol_name, audit.protocol_sha256),
        },
        image_set=audit.image_set,
        status=audit.status,
        progress=Progress(stage=audit.stage, percent=audit.percent),
        verdicts=audit.verdicts,
        error=audit.error,
        attempts=audit.attempts,
        created_at=audit.created_at,
        started_at=audit.started_at,
        finished_at=audit.finished_at,
    )
