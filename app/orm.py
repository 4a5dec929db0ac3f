"""The service's tables (one place, so the migrations have one source)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow

__all__ = [
    "Approval",
    "Audit",
    "AuditEvent",
    "AuditResult",
    "AuditShard",
    "ImageSet",
    "Network",
    "Role",
    "Status",
    "User",
]

#: the API declares these as enums
Role = Literal["submitter", "auditor", "admin"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ROLES: tuple[str, ...] = get_args(Role)
STATUSES: tuple[str, ...] = get_args(Status)
#: an audit in one of these states is finished: its row is immutable (a trigger refuses UPDATE
#: and DELETE, migration 0004)
FINISHED = ("succeeded", "failed", "cancelled")
#: states that count against a user's limit of audits in progress
ACTIVE = ("queued", "running")


def new_id() -> str:
    return uuid.uuid4().hex


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    #: SHA-256 of the bearer token (tokens are 256-bit random, shown once)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: set when an admin disabled the user: its token is refused (401) until enabled again
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)


class Network(Base):
    """An uploaded model (the API calls them models)."""

    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("owner_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    gradient_access: Mapped[str] = mapped_column(String(20))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    manifest: Mapped[dict[str, Any]]
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    #: files the manifest references (mask, external data): [{"name", "sha256", "size"}]
    files: Mapped[list[Any]]
    #: what ``recon-audit inspect`` printed (validation, parity, spec)
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageSet(Base):
    __tablename__ = "image_sets"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    #: [{"name", "sha256", "size", "shape", "format"}]
    images: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Audit(Base):
    """An audit; once finished (:data:`FINISHED`) its row is immutable (a trigger refuses
    UPDATE and DELETE, on SQLite and PostgreSQL)."""

    __tablename__ = "audits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    protocol_name: Mapped[str] = mapped_column(String(100))
    protocol_version: Mapped[str] = mapped_column(String(40))
    protocol_sha256: Mapped[str] = mapped_column(String(64))
    protocol_yaml: Mapped[str] = mapped_column(Text)
    #: "builtin" or an image set id
    image_set: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    stage: Mapped[str | None] = mapped_column(String(40), default=None)
    percent: Mapped[float] = mapped_column(default=0.0)
    verdicts: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    #: the worker process holding it while it runs ("host:pid:nonce"), and until when (Unix
    #: time; renewed while it runs): a lost lease is taken over (worker/tasks.py)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires: Mapped[float | None] = mapped_column(default=None)
    #: its task was handed to the broker (the API stores an audit unsent and marks it once
    #: sent; the workers' sweep sends what stayed unsent): an unsent audit does not count
    #: against its owner's limit of active audits
    enqueued: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditResult(Base):
    """Written once per audit (immutable: a trigger refuses updates and deletes); corrections
    are new audits."""

    __tablename__ = "audit_results"

    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id"), primary_key=True)
    results: Mapped[dict[str, Any]]
    results_sha256: Mapped[str] = mapped_column(String(64))
    #: the artefacts in the content-addressed store: {"report.pdf": sha256, "figures/x.png": ...}
    files: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Append-only log: who did what when, each event hashing the previous one."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    subject: Mapped[str] = mapped_column(String(100))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditShard(Base):
    """One test of an audit, run by whichever worker takes it (an audit fans out per test);
    the last shard to finish merges the shards into the audit's results."""

    __tablename__ = "audit_shards"
    __table_args__ = (UniqueConstraint("audit_id", "test"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id"), index=True)
    test: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    percent: Mapped[float] = mapped_column(default=0.0)
    attempts: Mapped[int] = mapped_column(default=0)
    #: the worker process holding it while it runs ("host:pid:nonce"), and until when (Unix
    #: time; renewed while it runs): a lost lease is taken over (worker/tasks.py)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires: Mapped[float | None] = mapped_column(default=None)
    #: the shard's results.json (its own test filled in, the others skipped)
    results: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    #: its figures in the store: {"figures/x.png": sha256}
    files: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class Approval(Base):
    """An auditor's signature on an audit's certificate (append-only: a trigger refuses updates
    and deletes): the approved PDF is a new file in the store (an incremental update of the
    issued one, which stays); one approval per audit and meaning."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("audit_id", "meaning"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id"), index=True)
    approver_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    #: the signature's meaning (21 CFR 11.50): "approved"
    meaning: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    #: the signed PDF in the content-addressed store, and the one it was added to
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    previous_pdf_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
