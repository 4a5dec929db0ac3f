"""Audits: created queued and enqueued only after the row is committed; read back with their
progress, verdicts and artefacts."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import events
from app.audits.schemas import AuditCreate, AuditOut, Progress
from app.errors import Invalid, NotFound
from app.images import repository as images
from app.images.service import BUILTIN_SET
from app.networks import repository as networks
from app.orm import Audit, User
from reconstruction.protocols import BUILTIN, ProtocolError, load_protocol, parse_protocol

__all__ = ["as_out", "create_audit", "enqueue"]


def create_audit(session: Session, user: User, request: AuditCreate) -> Audit:
    network = networks.visible(session, user, request.model_id)
    if network is None:
        raise NotFound(f"no model {request.model_id}")
    try:
        if request.protocol in BUILTIN:
            protocol = load_protocol(request.protocol)
        else:
            protocol = parse_protocol(request.protocol, "inline protocol")
    except ProtocolError as exc:
        raise Invalid(str(exc), field="protocol") from exc
    image_set = BUILTIN_SET
    if request.image_set != BUILTIN_SET:
        found = images.visible(session, user, request.image_set)
        if found is None:
            raise NotFound(f"no image set {request.image_set}")
        image_set = found.id
    audit = Audit(
        owner_id=user.id,
        network_id=network.id,
        protocol_name=protocol.name,
        protocol_version=protocol.version,
        protocol_sha256=protocol.sha256,
        protocol_yaml=protocol.to_yaml(),
        image_set=image_set,
        status="queued",
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


def enqueue(audit_id: str) -> None:
    """Send the audit to the workers (call after the commit)."""
    from worker.celery_app import app as celery

    celery.send_task("worker.tasks.run_audit", args=[audit_id])


def as_out(audit: Audit) -> AuditOut:
    return AuditOut(
        id=audit.id,
        model_id=audit.network_id,
        owner_id=audit.owner_id,
        protocol={
            "name": audit.protocol_name,
            "version": audit.protocol_version,
            "sha256": audit.protocol_sha256,
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
