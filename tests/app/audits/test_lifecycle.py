"""The audit's lifecycle on a real (embedded) database: a second ``run_audit`` for an audit
fanned out already leaves it to its shards, or merges them when they all succeeded; it neither
counts an attempt nor starts the audit again. A shard's run stops once its audit ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.audits import lifecycle
from app.db import get_engine, session_factory
from app.orm import Audit, AuditEvent, AuditShard
from app.settings import get_settings
from tests.app.conftest import audit_row


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
