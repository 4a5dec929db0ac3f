"""The audit's lifecycle on a real (embedded) database: a second ``run_audit`` for an audit
fanned out already leaves it to its shards, or merges them when they all succeeded; it neither
counts an attempt nor starts the audit again. A shard's run stops once its audit ended."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app import checkpoints, events
from app.audits import lifecycle
from app.certificates.service import SignedReport
from app.db import get_engine, session_factory
from app.orm import Audit, AuditEvent, AuditShard
from app.settings import get_settings
from tests.app.conftest import audit_row, running_signer


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from app.service_cli import upgrade_database

    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    for key in ("DATABASE_URL", "RECON_AUDIT_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    get_engine.cache_clear()
    upgrade_database()
    yield
    get_engine().dispose()
    get_settings.cache_clear()
    get_engine.cache_clear()


def _fanned_out(shard_status: str) -> str:
    """A running audit no worker holds, fanned out: its perturbation shard in ``shard_status``,
    its structural shard succeeded."""
    with session_factory()() as session:
        audit = audit_row(session, status="running", attempts=1)
        for test, status in (("perturbation", shard_status), ("structural", "succeeded")):
            session.add(AuditShard(audit_id=audit.id, test=test, status=status))
        session.commit()
        return audit.id


def _attempts_and_starts(audit_id: str) -> tuple[int, int]:
    with session_factory()() as session:
        audit = session.get_one(Audit, audit_id)
        starts = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "audit.started")
        ).all()
        return audit.attempts, len(starts)


@pytest.mark.usefixtures("embedded")
def test_a_second_run_audit_leaves_a_fanned_out_audit_to_its_shards() -> None:
    audit_id = _fanned_out("queued")
    assert lifecycle.run_audit(audit_id) == "fanned out already"
    assert _attempts_and_starts(audit_id) == (1, 0)


@pytest.mark.usefixtures("embedded")
def test_a_second_run_audit_merges_shards_that_all_succeeded() -> None:
    audit_id = _fanned_out("succeeded")  # their results are missing: the merge fails, visibly
    assert lifecycle.run_audit(audit_id) == "failed"
    assert _attempts_and_starts(audit_id) == (1, 0)
    with session_factory()() as session:
        audit = session.get_one(Audit, audit_id)
        assert audit.status == "failed"
        assert audit.error == "merging the shards failed: ValueError: no shard to merge"


@pytest.mark.usefixtures("embedded")
def test_a_shards_run_stops_once_its_audit_ended() -> None:
    """A shard's run stops at its next progress check when its audit failed in another shard
    (as when it was cancelled): no worker keeps computing for a finished audit."""
    audit_id = _fanned_out("running")
    lifecycle._Progress(audit_id, "perturbation", 1)(
        {"stage": "perturbation", "done": 1, "total": 4}
    )
    with session_factory()() as session:
        shard = session.scalars(
            select(AuditShard).where(
                AuditShard.audit_id == audit_id, AuditShard.test == "perturbation"
            )
        ).one()
        assert shard.percent == 25.0
        session.get_one(Audit, audit_id).status = "failed"
        session.commit()
    with pytest.raises(lifecycle.Stopped, match="failed"):
        lifecycle._Progress(audit_id, "perturbation", 1)(
            {"stage": "perturbation", "done": 2, "total": 4}
        )


@pytest.mark.usefixtures("embedded")
def test_a_finish_is_anchored_at_once_so_the_newest_audit_cannot_be_rewritten(
    tmp_path: Path,
) -> None:
    """The worker's last step writes a signed checkpoint whose head holds the audit's own
    ``audit.succeeded``: rewriting that audit's verdicts with the chain recomputed (triggers
    dropped) is caught, although no other event came after it."""
    settings = get_settings()
    with session_factory()() as session:
        audit_id = audit_row(session, status="running", attempts=1).id
    results = {"verdicts": {"perturbation": "unstable"}, "tests": {}}
    signed = SignedReport("5" * 64, "CN=recon-audit service", "signer process")
    with running_signer(tmp_path / "signer.log"):
        lifecycle._finish(audit_id, results, {"results.json": "4" * 64}, signed)
    with session_factory()() as session:
        head = events.chain_head(session)
        anchors = checkpoints.read_all(settings)
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert last is not None
        assert last.action == "audit.succeeded"
        assert [a.head for a in anchors] == [head]  # anchored with its audit.succeeded
        assert events.verify_chain(session, anchors).valid
    connection = sqlite3.connect(settings.data_dir / "recon-audit.db")
    for (trigger,) in connection.execute("SELECT name FROM sqlite_master WHERE type='trigger'"):
        connection.execute(f"DROP TRIGGER {trigger}")
    forged = {"perturbation": "stable"}
    connection.execute(
        "UPDATE audits SET verdicts = ? WHERE id = ?", (json.dumps(forged), audit_id)
    )
    connection.execute(
        "UPDATE audit_results SET results = ? WHERE audit_id = ?",
        (json.dumps({**results, "verdicts": forged}), audit_id),
    )
    connection.commit()
    connection.close()
    with session_factory()() as session:
        event = session.get_one(AuditEvent, last.id)
        details = dict(event.details)
        details["verdicts"] = forged
        details["results_content_sha256"] = events.results_digest({**results, "verdicts": forged})
        event.details = details
        event.hash = events._digest(event)  # the last event: nothing after it to recompute
        session.commit()
        report = events.verify_chain(session, checkpoints.read_all(settings))
    assert not report.valid
    assert "the chain was rewritten" in str(report.problem)
