"""Leases on running audits and shards (on the real, migrated PostgreSQL): a claim takes a
queued row or one whose holder is lost, never one a live worker holds; the sweep requeues
exactly the lost ones, once, and logs each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.audits.leases import LostMessages, Requeue, claim, interrupted, lost, unsent
from app.orm import Audit, AuditEvent, AuditShard
from tests.app.conftest import audit_row


def _lease(db: Session, row: Audit | AuditShard) -> tuple[str, str | None]:
    """A row's status and lease holder, as stored."""
    db.refresh(row)
    return row.status, row.lease_owner


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lost_leases() -> None:
    now = time.time()
    here = socket.gethostname()
    assert lost(None, None, now)
    assert lost(f"{here}:1:ab", now - 1, now)  # expired
    assert not lost(f"{here}:{os.getpid()}:ab", now + 60, now)
    assert lost(f"{here}:{_dead_pid()}:ab", now + 60, now)  # its process is gone
    # a process of another host is trusted until its lease expires
    assert not lost(f"elsewhere:{_dead_pid()}:ab", now + 60, now)


def test_a_claim_takes_a_queued_or_lost_row_and_never_a_held_one(db: Session) -> None:
    audit = audit_row(db)
    owner = claim(db, audit)
    assert owner is not None
    assert (audit.status, audit.lease_owner, audit.attempts) == ("running", owner, 1)
    assert claim(db, audit) is None  # held by a live process (this one)
    assert audit.attempts == 1

    audit.lease_owner = f"{socket.gethostname()}:{_dead_pid()}:ab"
    db.commit()
    taken = claim(db, audit, count=False)
    assert taken is not None
    assert taken != owner
    assert audit.attempts == 1

    audit.status = "succeeded"
    db.commit()
    assert claim(db, audit) is None


def test_the_sweep_requeues_each_lost_row_once(db: Session) -> None:
    audit = audit_row(db)
    audit.status = "running"
    dead = f"{socket.gethostname()}:{_dead_pid()}:ab"
    live = f"{socket.gethostname()}:{os.getpid()}:cd"
    later = time.time() + 60
    db.add_all(
        [
            AuditShard(audit_id=audit.id, test="perturbation", status="running"),
            AuditShard(audit_id=audit.id, test="structural", status="succeeded"),
            AuditShard(audit_id=audit.id, test="sampling", status="queued"),
        ]
    )
    db.commit()
    shards = {s.test: s for s in db.scalars(select(AuditShard))}
    shards["perturbation"].lease_owner, shards["perturbation"].lease_expires = dead, later
    db.commit()

    assert interrupted(db) == [Requeue(audit.id, "perturbation")]
    db.commit()
    assert _lease(db, shards["perturbation"]) == ("queued", None)
    assert interrupted(db) == []  # once

    # a live holder is left alone; an audit held for its merge by a lost worker is requeued
    shards["perturbation"].status, shards["perturbation"].lease_owner = "running", live
    shards["perturbation"].lease_expires = later
    audit.lease_owner, audit.lease_expires = dead, later
    db.commit()
    assert interrupted(db) == [Requeue(audit.id, None)]
    db.commit()
    assert _lease(db, audit) == ("queued", None)
    logged = db.scalars(select(AuditEvent).where(AuditEvent.action == "audit.requeued")).all()
    assert [(e.subject, e.details["test"]) for e in logged] == [
        (f"audit:{audit.id}", "perturbation"),
        (f"audit:{audit.id}", None),
    ]


def test_the_sweep_finds_what_no_message_carries(db: Session) -> None:
    """The embedded broker deletes a message when a worker takes it: a worker that died before
    it claimed the row leaves a queued audit, a queued shard, or shards that no one merges."""
    audit = audit_row(db)
    assert unsent(db, set()) == {(audit.id, None)}
    assert unsent(db, {(audit.id, None)}) == set()  # its message waits in the queue

    live = f"{socket.gethostname()}:{os.getpid()}:cd"
    audit.status = "running"
    db.add_all(
        [
            AuditShard(audit_id=audit.id, test="perturbation", status="queued"),
            AuditShard(audit_id=audit.id, test="structural", status="running", lease_owner=live),
            AuditShard(audit_id=audit.id, test="sampling", status="succeeded"),
        ]
    )
    db.commit()
    assert unsent(db, set()) == {(audit.id, "perturbation")}
    assert unsent(db, {(audit.id, "perturbation")}) == set()
    audit.lease_owner, audit.lease_expires = live, time.time() + 60
    db.commit()
    assert unsent(db, set()) == set()  # held for its fan-out: the lease sweep watches it

    audit.lease_owner = audit.lease_expires = None
    for shard in db.scalars(select(AuditShard)):
        shard.status, shard.lease_owner = "succeeded", None
    db.commit()
    assert unsent(db, set()) == {(audit.id, None)}  # run_audit merges them
    audit.status = "cancelled"
    db.commit()
    assert unsent(db, set()) == set()


def test_a_message_is_lost_when_its_row_stays_unsent_for_two_sweeps(db: Session) -> None:
    """A worker claims what it took within moments: one sweep's unsent row may be in a live
    worker's hands; the next sweep's is lost, and sent again once (logged)."""
    first = audit_row(db)
    second = audit_row(db, of=first)
    messages = LostMessages()
    assert messages.sweep(db, set()) == []  # both unsent once: maybe just taken
    second.status = "running"  # a worker claimed the one it took
    second.lease_owner = f"{socket.gethostname()}:{os.getpid()}:cd"
    db.commit()
    assert messages.sweep(db, set()) == [Requeue(first.id, None, "its message was lost")]
    db.commit()
    assert messages.sweep(db, {(first.id, None)}) == []  # sent again: it waits in the queue
    logged = db.scalars(select(AuditEvent).where(AuditEvent.action == "audit.requeued")).all()
    assert [(e.subject, e.details) for e in logged] == [
        (f"audit:{first.id}", {"test": None, "lost": "its message"})
    ]


def _selects(db: Session, sweep: Callable[[], object]) -> int:
    """How many SELECT statements ``sweep`` sends."""
    statements: list[str] = []

    def seen(*args: object) -> None:  # (connection, cursor, statement, parameters, ...)
        statements.append(str(args[2]))

    bind = db.connection()
    event.listen(bind, "before_cursor_execute", seen)
    try:
        sweep()
    finally:
        event.remove(bind, "before_cursor_execute", seen)
    return sum(s.lstrip().upper().startswith("SELECT") for s in statements)


def test_a_sweep_reads_every_running_audit_in_a_fixed_number_of_queries(db: Session) -> None:
    """Every worker sweeps every half lease: the audits and their shards are read in one query
    each, however many audits run (not a query per audit)."""
    live = f"{socket.gethostname()}:{os.getpid()}:cd"
    counts = []
    first: Audit | None = None
    for _ in range(2):
        for _ in range(3):
            audit = audit_row(db, of=first, status="running")
            first = first or audit
            db.add_all(
                [
                    AuditShard(audit_id=audit.id, test="perturbation", status="queued"),
                    AuditShard(
                        audit_id=audit.id,
                        test="structural",
                        status="running",
                        lease_owner=live,
                        lease_expires=time.time() + 60,
                    ),
                ]
            )
        db.commit()
        db.expire_all()
        counts.append(
            (_selects(db, lambda: interrupted(db)), _selects(db, lambda: unsent(db, set())))
        )
    assert counts == [(2, 2), (2, 2)]
    assert len(unsent(db, set())) == 6  # each audit's queued shard
