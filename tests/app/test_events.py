"""The event chain on PostgreSQL: a finished audit's verdicts are bound to its
``audit.succeeded`` event, so a verdict changed in the database (by someone who first disabled
the audit's trigger) fails verification; the chain against anchors (a head it holds passes,
one it lost or rewrote fails), and an edit, a recomputed chain and a truncation each caught
against a signed checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import checkpoints, events
from app.events import GENESIS, Anchor, Head, _digest, chain_head, verify_chain
from app.orm import Audit, AuditEvent, AuditResult, Network, User
from app.settings import Settings


def _succeeded(db: Session) -> Audit:
    """A finished audit as the worker leaves it: row, results and the audit.succeeded event."""
    user = User(name="sam", role="submitter", token_hash="e" * 64)
    db.add(user)
    db.flush()
    network = Network(
        owner_id=user.id, name="n", sha256="a" * 64, format="onnx", gradient_access="white-box",
        size_bytes=1, filename="m.onnx", manifest={}, manifest_sha256="b" * 64, files=[],
        summary={},
    )  # fmt: skip
    db.add(network)
    db.flush()
    verdicts = {"perturbation": "unstable", "structural": "stable", "sampling": "skipped"}
    audit = Audit(
        owner_id=user.id, network_id=network.id, protocol_name="quick", protocol_version="2",
        protocol_sha256="c" * 64, protocol_yaml="", image_set="builtin", status="succeeded",
        verdicts=verdicts,
    )  # fmt: skip
    db.add(audit)
    db.flush()
    db.add(AuditResult(audit_id=audit.id, results={}, results_sha256="d" * 64, files={}))
    events.record(
        db,
        "worker",
        "audit.succeeded",
        f"audit:{audit.id}",
        {"verdicts": verdicts, "results_sha256": "d" * 64},
    )
    db.flush()
    return audit


def test_a_changed_verdict_is_refused_and_caught_when_the_trigger_is_dropped(db: Session) -> None:
    audit = _succeeded(db)
    assert verify_chain(db).valid
    change = text("""UPDATE audits SET verdicts = '{"perturbation": "stable"}' WHERE id = :id""")
    with pytest.raises(Exception, match="is finished"), db.begin_nested():
        db.execute(change, {"id": audit.id})
    db.execute(text("ALTER TABLE audits DISABLE TRIGGER audits_finished_immutable"))
    db.execute(change, {"id": audit.id})
    db.expire_all()
    report = verify_chain(db)
    assert not report.valid
    assert report.problem == (
        f"audit {audit.id}: its verdicts differ from those its audit.succeeded recorded"
    )


def test_the_chain_against_anchors(db: Session) -> None:
    _succeeded(db)
    head = chain_head(db)
    assert head.events == 1
    assert verify_chain(db, [Anchor(head, "checkpoint x")]).anchors == 1
    assert verify_chain(db, [Anchor(head, "checkpoint x")]).valid
    ahead = verify_chain(db, [Anchor(Head(head.events + 1, "f" * 64), "checkpoint y")])
    assert ahead.problem is not None
    assert "events were removed" in ahead.problem
    other = verify_chain(db, [Anchor(Head(head.events, "f" * 64), "checkpoint z")])
    assert other.problem == f"event {head.events} is not the head checkpoint z recorded: " + (
        "the chain was rewritten"
    )
    untrusted = verify_chain(db, [Anchor(head, "checkpoint w", "checkpoint w: bad signature")])
    assert untrusted.problem == "checkpoint w: bad signature"


def _rewrite_from(db: Session, first: int) -> None:
    """Recompute every hash from event ``first`` on, so the edited chain is consistent."""
    rows = db.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    previous = GENESIS
    for event in rows:
        if event.id >= first:
            event.prev_hash = previous
            event.hash = _digest(event)
        previous = event.hash
    db.flush()


@pytest.mark.usefixtures("service_signer")
@pytest.mark.parametrize("tamper", ["edit", "recompute", "truncate"])
def test_each_tamper_is_caught_against_a_signed_checkpoint_on_postgres(
    db: Session, tmp_path: Path, tamper: str
) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "checkpoints")
    for n in range(3):
        events.record(db, "admin", "test.event", f"thing:{n}", {"n": n})
    ids = db.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
    checkpoints.write(settings, chain_head(db), "test")
    assert verify_chain(db, checkpoints.read_all(settings)).valid
    db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
    if tamper == "edit":
        db.execute(text("""UPDATE audit_events SET details = '{"n": 9}' WHERE id = :id"""),
                   {"id": ids[1]})  # fmt: skip
        expected = "content does not match its hash"
    elif tamper == "recompute":
        db.execute(text("""UPDATE audit_events SET details = '{"n": 9}' WHERE id = :id"""),
                   {"id": ids[1]})  # fmt: skip
        db.expire_all()
        _rewrite_from(db, ids[1])
        expected = "the chain was rewritten"
    else:
        db.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[-1]})
        expected = "events were removed"
    db.expire_all()
    report = verify_chain(db, checkpoints.read_all(settings))
    assert not report.valid
    assert expected in str(report.problem)


def _drop_triggers(db: Session) -> None:
    """As an attacker with write access to the database: the finished audits' and results'
    triggers off."""
    db.execute(text("ALTER TABLE audits DISABLE TRIGGER audits_finished_immutable"))
    db.execute(text("ALTER TABLE audit_results DISABLE TRIGGER audit_results_append_only"))


def _with_content(db: Session) -> Audit:
    """A finished audit whose results have content, recorded as the worker records it now."""
    audit = _succeeded(db)
    results = {"verdicts": audit.verdicts, "tests": {"perturbation": {"worst": 0.25}}}
    db.execute(
        text("ALTER TABLE audit_results DISABLE TRIGGER audit_results_append_only")
    )  # the helper stored {} first
    db.get_one(AuditResult, audit.id).results = results
    db.flush()
    db.execute(text("ALTER TABLE audit_results ENABLE TRIGGER audit_results_append_only"))
    events.record(
        db,
        "worker",
        "audit.succeeded",
        f"audit:{audit.id}",
        {
            "verdicts": audit.verdicts,
            "results_sha256": "d" * 64,
            "results_content_sha256": events.results_digest(results),
        },
    )
    db.flush()
    return audit


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (
            """UPDATE audit_results SET results = jsonb_set(results::jsonb,
               '{tests,perturbation,worst}', '0.01')::json WHERE audit_id = :id""",
            "the results it serves differ from those its audit.succeeded recorded",
        ),
        ("UPDATE audits SET status = 'failed' WHERE id = :id", "is failed but the log recorded"),
        ("DELETE FROM audit_results WHERE audit_id = :id", "its results were deleted"),
    ],
    ids=["results-content", "status", "results-row"],
)
def test_a_finished_audits_record_changed_behind_the_service_is_caught(
    db: Session, tamper: str, expected: str
) -> None:
    audit = _with_content(db)
    assert verify_chain(db).valid, verify_chain(db).problem
    _drop_triggers(db)
    db.execute(text(tamper), {"id": audit.id})
    db.expire_all()
    report = verify_chain(db)
    assert not report.valid
    assert expected in str(report.problem)


def test_a_deleted_audit_is_caught(db: Session) -> None:
    audit_id = _with_content(db).id
    _drop_triggers(db)
    db.execute(text("DELETE FROM audit_results WHERE audit_id = :id"), {"id": audit_id})
    db.execute(text("DELETE FROM audits WHERE id = :id"), {"id": audit_id})
    db.expire_all()
    report = verify_chain(db)
    assert report.problem == f"audit {audit_id} is in the log but its row was deleted"


def test_older_events_are_checked_against_the_stored_results_file(
    db: Session, tmp_path: Path
) -> None:
    """An ``audit.succeeded`` recorded before it carried the content hash: the content is
    checked against the results.json the store keeps under the hash the event recorded."""
    from app.storage import Store

    store = Store(tmp_path / "store")
    results = {"verdicts": {"perturbation": "unstable"}, "n": 1}
    folder = store.workdir("r-")
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    sha = store.add(folder / "results.json")
    audit = _succeeded(db)
    _drop_triggers(db)
    stored = db.get_one(AuditResult, audit.id)
    stored.results, stored.results_sha256 = results, sha
    db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
    event = db.scalars(select(AuditEvent).where(AuditEvent.action == "audit.succeeded")).one()
    event.details = {"verdicts": audit.verdicts, "results_sha256": sha}
    db.flush()
    _rewrite_from(db, event.id)
    assert verify_chain(db, store=store).valid, verify_chain(db, store=store).problem
    stored.results = {**results, "n": 2}
    db.flush()
    report = verify_chain(db, store=store)
    assert "the results it serves differ" in str(report.problem)
