"""Which worker holds a running audit or shard: a lease, so that an interrupted one is run
again exactly once, whatever the broker.

A worker *claims* an audit (its whole run, its fan-out, or the merge of its shards) or a shard
before it runs it: a conditional update that succeeds only where the row is queued, or running
under a *lost* lease (expired, or held by a process of this host that no longer runs). While it
runs, a thread renews the lease every quarter of ``lease_seconds``. A redelivered task (Redis's
visibility timeout, a pool process lost) that finds the row held by a live worker leaves it.

Kombu's filesystem transport (the embedded broker) deletes a message when a worker takes it, so
a worker killed mid-run loses its message; every worker therefore sweeps, at start and every
half lease, for running rows whose lease is lost (:func:`interrupted`): it puts them back to
``queued`` (recorded in the audit log) and sends their task again; and for rows no worker holds
whose message is no longer in the queue at two sweeps in a row (:class:`LostMessages`: taken
by a worker that died before its claim).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from app import events
from app.db import session_factory, utcnow
from app.orm import FINISHED, Audit, AuditShard
from app.processes import alive
from app.settings import get_settings

__all__ = [
    "LostMessages",
    "Requeue",
    "claim",
    "holding",
    "interrupted",
    "lost",
    "never_sent",
    "unsent",
]

ACTOR = "worker"
Leased = Audit | AuditShard


@dataclass(frozen=True)
class Requeue:
    """A task to send again: ``run_shard(audit_id, test)``, or ``run_audit(audit_id)`` where
    ``test`` is None; ``why``, for the log."""

    audit_id: str
    test: str | None
    why: str = "its worker was lost"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lost(owner: str | None, expires: float | None, now: float) -> bool:
    """Whether a lease no longer holds: none, expired, or its process (on this host) is gone."""
    if owner is None or expires is None or expires < now:
        return True
    host, pid, _ = owner.rsplit(":", 2)
    return host == socket.gethostname() and not alive(int(pid))


def claim(session: Session, row: Leased, count: bool = True) -> str | None:
    """Take ``row`` (queued, or running under a lost lease) for this process: it is marked
    running, its attempts counted (where ``count``), and the new lease's owner returned; None
    when it is held by a live worker or finished. Committed."""
    now = time.time()
    if row.status not in ("queued", "running"):
        return None
    if row.status == "running" and not lost(row.lease_owner, row.lease_expires, now):
        return None
    table = type(row)
    owner = _owner()
    taken = session.execute(
        update(table)
        .where(
            *_as_read(row),
            table.status == row.status,
        )
        .values(
            status="running",
            lease_owner=owner,
            lease_expires=now + get_settings().lease_seconds,
            attempts=table.attempts + int(count),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(row)
    return owner if taken.rowcount == 1 else None  # type: ignore[attr-defined]


def _as_read(row: Leased) -> list[ColumnElement[bool]]:
    """The row, still under the lease it was read with (a conditional update's guard: another
    worker that took or requeued it meanwhile changed its owner)."""
    table = type(row)
    owner = table.lease_owner
    return [
        table.id == row.id,
        owner.is_(None) if row.lease_owner is None else owner == row.lease_owner,
    ]


def release(session: Session, table: type[Leased], row_id: object, owner: str) -> None:
    """Give the lease up (where it is still ``owner``'s); the caller commits."""
    session.execute(
        update(table)
        .where(*_held(table, row_id, owner))
        .values(lease_owner=None, lease_expires=None)
        .execution_options(synchronize_session=False)
    )


def _held(table: type[Leased], row_id: object, owner: str) -> list[ColumnElement[bool]]:
    """The row while ``owner`` holds it, and (an audit) is not finished: a finished audit's
    row is immutable, its lease moot (the worker that finished or failed it cleared it; one
    cancelled under it is left as it was)."""
    where = [table.id == row_id, table.lease_owner == owner]
    if table is Audit:
        where.append(Audit.status.not_in(FINISHED))
    return where


@contextlib.contextmanager
def holding(table: type[Leased], row_id: object, owner: str) -> Iterator[None]:
    """Renew ``owner``'s lease on the row while the block runs, and give it up afterwards."""
    seconds = get_settings().lease_seconds
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 4):
            with session_factory()() as session:
                session.execute(
                    update(table)
                    .where(*_held(table, row_id, owner))
                    .values(lease_expires=time.time() + seconds)
                    .execution_options(synchronize_session=False)
                )
                session.commit()

    thread = threading.Thread(target=renew, name=f"lease-{row_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with session_factory()() as session:
            release(session, table, row_id, owner)
            session.commit()


def interrupted(session: Session) -> list[Requeue]:
    """Put every running shard, and every audit held for its own run, fan-out or merge, whose
    lease is lost back to ``queued`` (each logged as ``audit.requeued``); the tasks to send
    again, once committed. Two workers sweeping at once requeue each row once."""
    now = time.time()
    found: list[Requeue] = []
    audits = session.scalars(select(Audit).where(Audit.status == "running")).all()
    running = _shards_of_running(session, AuditShard.status == "running")
    for audit in audits:
        rows: list[tuple[Leased, str | None]] = [
            (shard, shard.test) for shard in running.get(audit.id, [])
        ]
        if audit.lease_owner is not None:
            rows.append((audit, None))
        for row, test in rows:
            if not lost(row.lease_owner, row.lease_expires, now):
                continue
            table = type(row)
            requeued = session.execute(
                update(table)
                .where(
                    *_as_read(row),
                    table.status == "running",
                )
                .values(status="queued", lease_owner=None, lease_expires=None)
                .execution_options(synchronize_session=False)
            )
            if requeued.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another worker's sweep, or the holder, got there first
            events.record(
                session,
                ACTOR,
                "audit.requeued",
                f"audit:{audit.id}",
                {"test": test, "lost": row.lease_owner or "no lease"},
            )
            found.append(Requeue(audit.id, test))
    return found


def _shards_of_running(
    session: Session, *where: ColumnElement[bool]
) -> dict[str, list[AuditShard]]:
    """The shards of every running audit (and matching ``where``), by audit id, in one query
    (a sweep reads them all, every half lease, in every worker)."""
    query = (
        select(AuditShard)
        .join(Audit, AuditShard.audit_id == Audit.id)
        .where(Audit.status == "running", *where)
        .order_by(AuditShard.id)
    )
    found: dict[str, list[AuditShard]] = defaultdict(list)
    for shard in session.scalars(query):
        found[shard.audit_id].append(shard)
    return found


def unsent(session: Session, waiting: set[tuple[str, str | None]]) -> set[tuple[str, str | None]]:
    """What no worker holds and no message carries (``waiting``: the embedded broker's queue,
    :func:`app.queue.waiting`), as ``(audit_id, test)`` (``test`` None: ``run_audit``): a queued
    audit; a queued shard of a running audit; and a running audit that no worker holds whose
    shards all succeeded (``run_audit`` merges them). A row stays so for a moment after a worker
    took its message (the filesystem transport deletes it then) and before it claimed the row;
    only :class:`LostMessages` tells a lost message."""
    found: set[tuple[str, str | None]] = set()
    query = select(Audit).where(
        Audit.status.in_(("queued", "running")),
        or_(Audit.enqueued.is_(True), Audit.status == "running"),  # the outbox's: never_sent
    )
    audits = session.scalars(query).all()
    unheld = _shards_of_running(session, Audit.lease_owner.is_(None))
    for audit in audits:
        if audit.status == "queued":
            needed: list[str | None] = [None]
        elif audit.lease_owner is not None:
            continue  # held (its whole run, fan-out or merge): the lease sweep watches it
        else:
            shards = unheld.get(audit.id, [])
            needed = [s.test for s in shards if s.status == "queued"]
            if shards and all(s.status == "succeeded" for s in shards):
                needed = [None]
        found.update((audit.id, test) for test in needed if (audit.id, test) not in waiting)
    return found


def never_sent(session: Session, grace: float) -> list[str]:
    """The queued audits whose task was never handed to the broker (stored, then the broker
    failed before the send), created at least ``grace`` seconds ago (the API's own send has
    had its moment), oldest first: the outbox the sweep sends, on every broker."""
    before = utcnow() - timedelta(seconds=grace)
    query = (
        select(Audit.id)
        .where(Audit.status == "queued", Audit.enqueued.is_(False), Audit.created_at <= before)
        .order_by(Audit.created_at)
    )
    return list(session.scalars(query))


class LostMessages:
    """A sweeping process's memory of :func:`unsent` rows: a row unsent at two sweeps in a row
    (half a lease apart) lost its message with the worker that took it, since a live worker
    claims what it took within moments. :meth:`sweep` returns those tasks to send again, each
    logged as ``audit.requeued``."""

    def __init__(self) -> None:
        self.before: set[tuple[str, str | None]] = set()

    def sweep(self, session: Session, waiting: set[tuple[str, str | None]]) -> list[Requeue]:
        now = unsent(session, waiting)
        lost = sorted(now & self.before, key=lambda task: (task[0], task[1] or ""))
        self.before = now - set(lost)
        for audit_id, test in lost:
            events.record(
                session,
                ACTOR,
                "audit.requeued",
                f"audit:{audit_id}",
                {"test": test, "lost": "its message"},
            )
        return [Requeue(audit_id, test, "its message was lost") for audit_id, test in lost]
