"""The task queue: Celery's configuration, the task names, and sending them.

Redis in production (``BROKER_URL``), kombu's filesystem transport (no server) in the embedded
default. Tasks are acknowledged late and rejected when their worker dies, so Redis delivers an
interrupted audit again; the filesystem transport deletes a message when a worker takes it, so
the workers' sweep (:func:`app.audits.lifecycle.requeue_interrupted`) finds what it lost, with
:func:`waiting` telling the tasks still in its queue.

The API sends (:func:`enqueue_audit`, after its commit); the worker process (``worker/``)
registers the tasks under these names. ``app`` never imports ``worker`` (an import-linter
contract): Celery imports ``worker.tasks`` by name when a worker starts.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache

from celery import Celery

from app.settings import get_settings

__all__ = [
    "RUN_AUDIT",
    "RUN_SHARD",
    "broker_problem",
    "celery_app",
    "enqueue_audit",
    "enqueue_shard",
    "priority",
    "waiting",
]

RUN_AUDIT = "worker.tasks.run_audit"
RUN_SHARD = "worker.tasks.run_shard"
#: the priority levels of Redis's queue (0 first); the embedded broker has none
PRIORITIES = 10


@lru_cache
def celery_app() -> Celery:
    settings = get_settings()
    celery = Celery("recon_audit", broker=settings.broker, include=["worker.tasks"])
    options: dict[str, object] = {
        "visibility_timeout": settings.broker_visibility_timeout,
        # ten priority levels (0 first), each its own Redis list, taken in priority order
        "priority_steps": list(range(PRIORITIES)),
        "sep": ":",
        "queue_order_strategy": "priority",
    }
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    celery.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.audit_soft_time_limit,
        task_time_limit=settings.audit_time_limit,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        worker_hijack_root_logger=False,
    )
    return celery


def enqueue_audit(audit_id: str) -> None:
    """Send an audit to the workers (call after the commit that queued it)."""
    celery_app().send_task(RUN_AUDIT, args=[audit_id])


def enqueue_shard(audit_id: str, test: str, position: int = 0, backlog: int = 0) -> None:
    """Send one shard of a fanned-out audit to the workers (``test``: the shard's name, a test or
    a unit of its images). Its priority (:func:`priority`) interleaves the shards of many
    audits."""
    celery_app().send_task(RUN_SHARD, args=[audit_id, test], priority=priority(position, backlog))


def priority(position: int, backlog: int = 0) -> int:
    """A shard's priority on Redis (0 first): its ``position`` among its audit's shards (the
    longest tests first), plus its owner's ``backlog`` (their other audits running), at most
    the last level. So the first shards of every audit go before the later shards of any
    other, a small audit (``quick``: three shards) overtakes a large one (``standard``: one
    per test and image) that started before it, and one user's many audits wait behind
    another user's one. Messages sent again (a lost worker's) go first."""
    return min(PRIORITIES - 1, max(0, position) + max(0, backlog))


def broker_problem() -> str | None:
    """Why the broker cannot be reached (``/readyz``), or None."""
    try:
        with celery_app().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return None


def waiting() -> set[tuple[str, str | None]] | None:
    """What the embedded broker's queue holds, not yet taken by a worker: ``(audit_id, None)``
    for a ``run_audit`` message, ``(audit_id, test)`` for a ``run_shard`` one. None for a broker
    that delivers a lost worker's message again itself (Redis: the visibility timeout).

    A message file of kombu's filesystem transport is JSON: the task's name in its headers, and
    its body, base64, the JSON ``[args, kwargs, embed]``. A file that is not such a message
    (being written, or another program's) is skipped."""
    settings = get_settings()
    if not settings.embedded_broker:
        return None
    found: set[tuple[str, str | None]] = set()
    for path in (settings.broker_folder / "queue").glob(f"*.{settings.queue}.msg"):
        try:
            message = json.loads(path.read_bytes())
            name = message["headers"]["task"]
            args = json.loads(base64.b64decode(message["body"]))[0]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        if name == RUN_AUDIT and len(args) == 1:
            found.add((str(args[0]), None))
        elif name == RUN_SHARD and len(args) == 2:
            found.add((str(args[0]), str(args[1])))
    return found
