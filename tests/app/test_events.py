"""The event chain on PostgreSQL: a finished audit's verdicts are bound to its
``audit.succeeded`` event, so a verdict changed in the database (by someone who first disabled
the audit's trigger) fails verification; the chain against anchors (a head it holds passes,
one it lost or rewrote fails)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app import events
from app.events import Anchor, Head, chain_head, verify_chain
from app.orm import Audit, AuditResult, Network, User


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
