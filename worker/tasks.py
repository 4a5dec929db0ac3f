"""The Celery tasks: they take ids and call the audit's lifecycle (:mod:`app.audits.lifecycle`),
which claims the audit or shard, runs the science in the sandbox and stores its certificate.
Registered under the names the API sends (:mod:`app.queue`). Acknowledged late and rejected
when their worker dies, so Redis delivers an interrupted one again; every worker also sweeps
for lost ones at start and every half lease."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_process_init, worker_ready

from app.audits import lifecycle
from app.db import get_engine
from app.queue import RUN_AUDIT, RUN_SHARD, celery_app
from app.settings import get_settings

__all__ = ["run_audit", "run_shard"]

logger = logging.getLogger(__name__)
app = celery_app()


@app.task(name=RUN_AUDIT, acks_late=True, reject_on_worker_lost=True)
def run_audit(audit_id: str) -> str:
    return lifecycle.run_audit(audit_id)


@app.task(name=RUN_SHARD, acks_late=True, reject_on_worker_lost=True)
def run_shard(audit_id: str, test: str) -> str:
    return lifecycle.run_shard(audit_id, test)


@worker_ready.connect
def _sweep_for_lost_workers(**_kwargs: object) -> None:
    """In the worker's main process: requeue interrupted audits at start and every half lease."""
    every = get_settings().lease_seconds / 2

    def sweep() -> None:
        while True:
            try:
                lifecycle.requeue_interrupted()
            except Exception:  # the database may be away for a while: try again later
                logger.exception("the sweep for interrupted audits failed")
            time.sleep(every)

    threading.Thread(target=sweep, name="requeue-interrupted", daemon=True).start()


@worker_process_init.connect
def _own_connections(**_kwargs: object) -> None:
    """A pool process opens its own database connections, never the parent's (forked) ones."""
    get_engine().dispose(close=False)
