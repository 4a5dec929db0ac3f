"""Audit requests through the API (the worker's side is in tests/worker)."""

from __future__ import annotations

import io
import json
from typing import Any

import onnx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.events import verify_chain
from app.orm import Audit, AuditEvent
from app.settings import Settings, get_settings
from tests.app.conftest import bearer
from tests.app.networks.test_router import MANIFEST
from tests.reconstruction.models.conftest import conv_model


@pytest.fixture
def model_id(client: TestClient, tokens: dict[str, str]) -> str:
    buffer = io.BytesIO()
    onnx.save_model(conv_model(), buffer)
    response = client.post(
        "/api/v1/models",
        headers=bearer(tokens["alice"]),
        files=[
            ("model", ("model.onnx", buffer.getvalue())),
            ("manifest", ("manifest.json", json.dumps(MANIFEST).encode())),
        ],
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def test_create_audit_is_queued_and_visible_to_its_owner_and_auditors(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    response = client.post(
        "/api/v1/audits", headers=bearer(tokens["alice"]), json={"model_id": model_id}
    )
    assert response.status_code == 202, response.text
    audit = response.json()
    assert audit["status"] == "queued"
    assert audit["protocol"]["name"] == "quick"
    assert len(audit["protocol"]["sha256"]) == 64
    assert audit["progress"] == {"stage": None, "percent": 0.0}
    row = db.get(Audit, audit["id"])
    assert row is not None
    assert "perturbation" in row.protocol_yaml
    for who, code in (("alice", 200), ("ada", 200), ("bob", 404)):
        got = client.get(f"/api/v1/audits/{audit['id']}", headers=bearer(tokens[who]))
        assert got.status_code == code
    listed = client.get("/api/v1/audits", headers=bearer(tokens["bob"])).json()
    assert listed == []
    pending = client.get(f"/api/v1/audits/{audit['id']}/results", headers=bearer(tokens["alice"]))
    assert pending.status_code == 409
    assert "no results yet" in pending.json()["detail"]
    actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions[-2:] == ["model.uploaded", "audit.created"] or actions[-1] == "audit.created"
    assert verify_chain(db).valid


def test_inline_protocol_and_its_errors(
    client: TestClient, tokens: dict[str, str], model_id: str
) -> None:
    from reconstruction.protocols import load_protocol

    inline = load_protocol("quick").to_yaml().replace("name: quick", "name: mine")
    ok = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={"model_id": model_id, "protocol": inline},
    )
    assert ok.status_code == 202
    assert ok.json()["protocol"]["name"] == "custom:mine"
    bad = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={
            "model_id": model_id,
            "protocol": inline.replace(
                "    restarts: 2\n    keep: 1", "    restarts: 0\n    keep: 1"
            ),
        },
    )
    assert bad.status_code == 422
    assert bad.json()["field"] == "protocol"
    assert "perturbation.budget.restarts" in bad.json()["detail"]
    # detail heights are checked against the model's image size (32 x 32) when the audit is made
    tall = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={"model_id": model_id, "protocol": inline.replace("- 10\n", "- 40\n", 1)},
    )
    assert tall.status_code == 422, tall.text
    assert tall.json()["field"] == "protocol"
    assert "'structural.heights_px'" in tall.json()["detail"]
    assert "[40] px are larger than the image" in tall.json()["detail"]


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("bob", {}, 404),  # someone else's model
        ("alice", {"model_id": "nope"}, 404),
        ("alice", {"image_set": "nope"}, 404),
        ("alice", {"protocol": "fastest"}, 422),
    ],
)
def test_bad_audit_requests(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    model_id: str,
    who: str,
    body: dict[str, str],
    status: int,
) -> None:
    before = len(db.scalars(select(Audit)).all())
    response = client.post(
        "/api/v1/audits", headers=bearer(tokens[who]), json={"model_id": model_id, **body}
    )
    assert response.status_code == status, response.text
    assert len(db.scalars(select(Audit)).all()) == before


@pytest.mark.usefixtures("tokens")  # creating users writes events
def test_event_log_is_append_only_in_the_database(db: Session) -> None:
    event = db.scalars(select(AuditEvent)).first()
    assert event is not None
    event.actor = "someone else"
    with pytest.raises(DBAPIError, match="append-only"):
        db.flush()
    db.rollback()


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "database": "ok", "broker": "ok", "sandbox": "ok"}


def test_a_builtin_name_is_reserved_for_the_builtin(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    from reconstruction.protocols import load_protocol

    quick = load_protocol("quick")
    copy = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={"model_id": model_id, "protocol": quick.to_yaml()},
    )
    assert copy.status_code == 202, copy.text
    assert copy.json()["protocol"] == {**quick.identity(), "name": "quick", "builtin": True}
    weaker = quick.to_yaml().replace("  max_images: 2\n", "  max_images: 1\n")
    assert weaker != quick.to_yaml()
    spoofed = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={"model_id": model_id, "protocol": weaker},
    )
    assert spoofed.status_code == 202, spoofed.text
    shown = spoofed.json()["protocol"]
    assert shown["name"] == "custom:quick"
    assert shown["builtin"] is False
    assert shown["sha256"] != quick.sha256
    row = db.get(Audit, spoofed.json()["id"])
    assert row is not None
    assert row.protocol_name == "custom:quick"
    assert "name: quick" in row.protocol_yaml  # the text as submitted
    listed = client.get("/api/v1/audits", headers=bearer(tokens["alice"])).json()
    names = {a["id"]: a["protocol"]["name"] for a in listed}
    assert names[spoofed.json()["id"]] == "custom:quick"
    assert names[copy.json()["id"]] == "quick"


def test_a_protocol_without_tests_is_refused_and_nothing_stored(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    import yaml

    from reconstruction.protocols import load_protocol

    data = load_protocol("quick").model_dump(mode="json")
    data.update(name="empty", perturbation=None, structural=None, sampling=None)
    before = len(db.scalars(select(Audit)).all())
    response = client.post(
        "/api/v1/audits",
        headers=bearer(tokens["alice"]),
        json={"model_id": model_id, "protocol": yaml.safe_dump(data)},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "protocol"
    assert "runs no test" in response.json()["detail"]
    assert len(db.scalars(select(Audit)).all()) == before


def _create(client: TestClient, token: str, model_id: str) -> Any:
    return client.post("/api/v1/audits", headers=bearer(token), json={"model_id": model_id})


def test_cancel_a_queued_audit_by_its_owner_or_an_admin(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    first = _create(client, tokens["alice"], model_id).json()["id"]
    url = f"/api/v1/audits/{first}/cancel"
    assert client.post(url, headers=bearer(tokens["bob"])).status_code == 404
    auditor = client.post(url, headers=bearer(tokens["ada"]))
    assert auditor.status_code == 403
    assert "owner or an admin" in auditor.json()["detail"]
    cancelled = client.post(url, headers=bearer(tokens["alice"]))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"] == "cancelled by alice"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(url, headers=bearer(tokens["alice"]))
    assert again.status_code == 409
    assert "finished already (status: cancelled)" in again.json()["detail"]
    second = _create(client, tokens["alice"], model_id).json()["id"]
    by_admin = client.post(f"/api/v1/audits/{second}/cancel", headers=bearer(tokens["root"]))
    assert by_admin.json()["status"] == "cancelled"
    logged = db.scalars(select(AuditEvent).where(AuditEvent.action == "audit.cancelled")).all()
    assert [(e.subject, e.details) for e in logged] == [
        (f"audit:{first}", {"status_before": "queued"}),
        (f"audit:{second}", {"status_before": "queued"}),
    ]
    assert verify_chain(db).valid


def test_a_finished_audit_row_refuses_changes(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    audit_id = _create(client, tokens["alice"], model_id).json()["id"]
    # a queued audit's row changes as it runs
    db.execute(text("UPDATE audits SET stage = 'starting' WHERE id = :id"), {"id": audit_id})
    client.post(f"/api/v1/audits/{audit_id}/cancel", headers=bearer(tokens["alice"]))
    for statement in (
        """UPDATE audits SET verdicts = '{"perturbation": "stable"}' WHERE id = :id""",
        "UPDATE audits SET status = 'queued' WHERE id = :id",
        "DELETE FROM audits WHERE id = :id",
    ):
        with pytest.raises(DBAPIError, match="is finished"), db.begin_nested():
            db.execute(text(statement), {"id": audit_id})
    row = db.get(Audit, audit_id)
    assert row is not None
    db.refresh(row)
    assert (row.status, row.verdicts) == ("cancelled", None)


def test_active_audits_are_limited_per_user_with_retry_after(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    limited = Settings(max_active_audits=2, active_audits_retry_after=30)
    client.app.dependency_overrides[get_settings] = lambda: limited  # type: ignore[attr-defined]
    first, second = (_create(client, tokens["alice"], model_id) for _ in range(2))
    assert (first.status_code, second.status_code) == (202, 202)
    before = len(db.scalars(select(Audit)).all())
    refused = _create(client, tokens["alice"], model_id)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert "the most allowed at once is 2" in refused.json()["detail"]
    assert len(db.scalars(select(Audit)).all()) == before
    # an auditor's own audits are counted apart from alice's
    assert _create(client, tokens["ada"], model_id).status_code == 202
    client.post(f"/api/v1/audits/{first.json()['id']}/cancel", headers=bearer(tokens["alice"]))
    assert _create(client, tokens["alice"], model_id).status_code == 202


def test_status_polls_are_conditional(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    created = client.post(
        "/api/v1/audits", headers=bearer(tokens["alice"]), json={"model_id": model_id}
    ).json()
    assert created["created_at"].endswith("Z")
    path = f"/api/v1/audits/{created['id']}"
    first = client.get(path, headers=bearer(tokens["alice"]))
    assert first.status_code == 200
    assert first.json()["created_at"] == created["created_at"]
    etag = first.headers["ETag"]
    same = client.get(path, headers={**bearer(tokens["alice"]), "If-None-Match": etag})
    assert (same.status_code, same.content, same.headers["ETag"]) == (304, b"", etag)
    weak = client.get(path, headers={**bearer(tokens["alice"]), "If-None-Match": f"W/{etag}"})
    assert weak.status_code == 304
    row = db.get(Audit, created["id"])
    assert row is not None
    row.status, row.stage, row.percent = "running", "perturbation", 12.5
    db.commit()
    moved = client.get(path, headers={**bearer(tokens["alice"]), "If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.json()["progress"] == {"stage": "perturbation", "percent": 12.5}
    assert moved.headers["ETag"] != etag
    # the ETag never lets another user see the audit
    hidden = client.get(path, headers={**bearer(tokens["bob"]), "If-None-Match": "*"})
    assert hidden.status_code == 404


def test_unbounded_inline_protocols_and_bodies_are_refused(
    client: TestClient, db: Session, tokens: dict[str, str], model_id: str
) -> None:
    before = len(db.scalars(select(Audit)).all())
    for protocol, message in (
        ("name: " + "[" * 100_000, "levels deep"),
        ('{"name": ' + "[" * 50_000 + "]" * 50_000 + "}", "levels deep"),
        ("name: &n mine\nversion: *n\n", "aliases are not accepted"),
        ("name: " + "x" * 2**20, "is too large"),
    ):
        response = client.post(
            "/api/v1/audits",
            headers=bearer(tokens["alice"]),
            json={"model_id": model_id, "protocol": protocol},
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "protocol"
        assert response.json()["detail"].startswith("inline protocol ")
        assert message in response.json()["detail"]
    # a request body nested 100,000 deep: refused as it is parsed, in the one error format
    deep = '{"model_id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post(
        "/api/v1/audits",
        headers={**bearer(tokens["alice"]), "Content-Type": "application/json"},
        content=deep,
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body", "field": None}
    assert len(db.scalars(select(Audit)).all()) == before
