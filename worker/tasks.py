"""``run_audit(audit_id)``: a thin task. It opens its own sessions, copies the verified inputs
into a private folder, runs ``recon-audit audit`` in the sandbox (which calls ``run_suite``),
reports progress, and stores the results once.

Idempotent: a finished audit is left alone; a redelivered one (its worker died) runs again and
writes its results once (the results table's key is the audit id, and it refuses updates).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import events
from app.db import session_factory, utcnow
from app.networks.service import materialise, safe_name
from app.orm import Audit, AuditResult, ImageSet, Network
from app.sandbox import run_cli
from app.settings import get_settings
from app.storage import Spooled, Store
from worker.celery_app import app

__all__ = ["run_audit"]

ACTOR = "worker"
#: seconds between progress writes
PROGRESS_EVERY = 1.0


def _fail(audit_id: str, message: str) -> None:
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in ("succeeded", "failed"):
            return
        audit.status, audit.error, audit.finished_at = "failed", message[:4000], utcnow()
        events.record(session, ACTOR, "audit.failed", f"audit:{audit_id}", {"error": message[:500]})
        session.commit()


def _start(session: Session, audit_id: str) -> tuple[Network, ImageSet | None] | None:
    audit = session.get(Audit, audit_id, with_for_update=True)
    if audit is None or audit.status in ("succeeded", "failed"):
        return None
    if session.get(AuditResult, audit_id) is not None:  # stored, status not yet written
        audit.status, audit.percent, audit.finished_at = "succeeded", 100.0, utcnow()
        session.commit()
        return None
    audit.status, audit.stage, audit.percent = "running", "starting", 0.0
    audit.attempts += 1
    audit.started_at = utcnow()
    events.record(session, ACTOR, "audit.started", f"audit:{audit_id}", {"attempt": audit.attempts})
    session.commit()
    network = session.get(Network, audit.network_id)
    assert network is not None
    image_set = None if audit.image_set == "builtin" else session.get(ImageSet, audit.image_set)
    return network, image_set


class _Progress:
    """Writes the child's progress to the audit row, at most once per second."""

    def __init__(self, audit_id: str, stages: int = 3) -> None:
        self.audit_id, self.stages = audit_id, stages
        self.order: list[str] = []
        self.last = 0.0

    def __call__(self, update: dict[str, Any]) -> None:
        stage = str(update["stage"])
        if stage not in self.order:
            self.order.append(stage)
        now = time.monotonic()
        done, total = int(update["done"]), max(int(update["total"]), 1)
        if now - self.last < PROGRESS_EVERY and done < total:
            return
        self.last = now
        fraction = (len(self.order) - 1 + done / total) / self.stages
        with session_factory()() as session:
            audit = session.get(Audit, self.audit_id)
            if audit is not None and audit.status == "running":
                audit.stage, audit.percent = stage, round(min(99.0, 100 * fraction), 1)
                session.commit()


def _store_outputs(store: Store, out: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        spooled = Spooled(path, hashlib.sha256(data).hexdigest(), len(data))
        store.commit(spooled)
        files[path.relative_to(out).as_posix()] = spooled.sha256
    return files


@app.task(name="worker.tasks.run_audit", acks_late=True, reject_on_worker_lost=True)
def run_audit(audit_id: str) -> str:
    settings = get_settings()
    store = Store(settings.store_dir)
    with session_factory()() as session:
        started = _start(session, audit_id)
    if started is None:
        return "nothing to do"
    network, image_set = started
    workdir = store.workdir(f"audit-{audit_id}-")
    try:
        (workdir / "model").mkdir()
        model, manifest = materialise(store, network, workdir / "model")
        args = ["audit", str(model), "--manifest", str(manifest)]
        with session_factory()() as session:
            audit = session.get(Audit, audit_id)
            assert audit is not None
            (workdir / "protocol.yaml").write_text(audit.protocol_yaml)
        if image_set is not None:
            (workdir / "images").mkdir()
            for image in image_set.images:
                target = workdir / "images" / safe_name(image["name"], "images")
                store.copy_out(image["sha256"], target)
                args += ["--images", str(target)]
        args += ["--protocol", "protocol.yaml", "--device", settings.device]
        args += ["--out", "out", "--progress", "json"]
        result = run_cli(
            args,
            workdir=workdir,
            timeout=settings.audit_time_limit,
            cpu_seconds=settings.sandbox_cpu_seconds,
            memory_bytes=settings.sandbox_memory_bytes,
            on_progress=_Progress(audit_id),
        )
        if result.returncode != 0:
            _fail(audit_id, f"the audit run failed: {result.error_message()}")
            return "failed"
        results_path = workdir / "out" / "results.json"
        results = json.loads(results_path.read_text())
        files = _store_outputs(store, workdir / "out")
        with session_factory()() as session:
            audit = session.get(Audit, audit_id)
            assert audit is not None
            try:
                session.add(
                    AuditResult(
                        audit_id=audit_id,
                        results=results,
                        results_sha256=files["results.json"],
                        files=files,
                    )
                )
                session.flush()
            except IntegrityError:  # a concurrent delivery stored them first
                session.rollback()
                audit = session.get(Audit, audit_id)
                assert audit is not None
            audit.status, audit.stage, audit.percent = "succeeded", "done", 100.0
            audit.verdicts, audit.finished_at = results["verdicts"], utcnow()
            events.record(
                session,
                ACTOR,
                "audit.succeeded",
                f"audit:{audit_id}",
                {"verdicts": results["verdicts"], "results_sha256": files["results.json"]},
            )
            session.commit()
        return "succeeded"
    except SoftTimeLimitExceeded:
        _fail(audit_id, "the audit exceeded its time limit")
        return "failed"
    except Exception as exc:
        _fail(audit_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
