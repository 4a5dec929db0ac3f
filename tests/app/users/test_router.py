from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.events import verify_chain
from app.orm import AuditEvent
from tests.app.conftest import bearer


def test_admins_create_users_whose_tokens_work(client: TestClient, tokens: dict[str, str]) -> None:
    created = client.post(
        "/api/v1/users", headers=bearer(tokens["root"]), json={"name": "carol", "role": "auditor"}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("ra_")
    assert client.get("/api/v1/audits", headers=bearer(token)).status_code == 200
    names = [u["name"] for u in client.get("/api/v1/users", headers=bearer(tokens["root"])).json()]
    assert "carol" in names
    assert "token" not in client.get("/api/v1/users", headers=bearer(tokens["root"])).json()[0]


def test_only_admins_manage_users(client: TestClient, tokens: dict[str, str]) -> None:
    for who in ("alice", "ada"):
        response = client.post(
            "/api/v1/users", headers=bearer(tokens[who]), json={"name": "eve", "role": "admin"}
        )
        assert response.status_code == 403
    duplicate = client.post(
        "/api/v1/users", headers=bearer(tokens["root"]), json={"name": "alice", "role": "admin"}
    )
    assert duplicate.status_code == 409
    bad_role = client.post(
        "/api/v1/users", headers=bearer(tokens["root"]), json={"name": "zed", "role": "king"}
    )
    assert bad_role.status_code == 422
    assert bad_role.json()["field"] == "role"


def test_token_rotation_revocation_and_disabling_are_logged(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    root = bearer(tokens["root"])
    listed = client.get("/api/v1/users", headers=root).json()
    alice = next(u for u in listed if u["name"] == "alice")

    def audits(token: str) -> Any:
        return client.get("/api/v1/audits", headers=bearer(token))

    rotated = client.post(f"/api/v1/users/{alice['id']}/rotate-token", headers=root)
    assert rotated.status_code == 200, rotated.text
    token = rotated.json()["token"]
    assert token != tokens["alice"]
    assert audits(tokens["alice"]).status_code == 401
    assert "invalid token" in audits(tokens["alice"]).json()["detail"]
    assert audits(token).status_code == 200
    # by name too
    assert client.post("/api/v1/users/alice/revoke-token", headers=root).status_code == 200
    assert audits(token).status_code == 401
    token = client.post("/api/v1/users/alice/rotate-token", headers=root).json()["token"]
    disabled = client.post("/api/v1/users/alice/disable", headers=root)
    assert disabled.status_code == 200
    assert disabled.json()["disabled_at"] is not None
    refused = audits(token)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "user alice is disabled"
    enabled = client.post("/api/v1/users/alice/enable", headers=root)
    assert enabled.json()["disabled_at"] is None
    assert audits(token).status_code == 200
    logged = db.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.subject == f"user:{alice['id']}")
        .order_by(AuditEvent.id)
    ).all()
    assert logged == [
        "user.created",
        "user.token_rotated",
        "user.token_revoked",
        "user.token_rotated",
        "user.disabled",
        "user.enabled",
    ]
    assert verify_chain(db).valid


def test_only_admins_change_users(client: TestClient, tokens: dict[str, str]) -> None:
    for who in ("alice", "ada"):
        response = client.post("/api/v1/users/bob/disable", headers=bearer(tokens[who]))
        assert response.status_code == 403
    missing = client.post("/api/v1/users/nobody/disable", headers=bearer(tokens["root"]))
    assert missing.status_code == 404
    assert client.get("/api/v1/audits", headers=bearer(tokens["bob"])).status_code == 200


def test_the_last_active_admin_cannot_lock_everyone_out(
    client: TestClient, tokens: dict[str, str]
) -> None:
    root = bearer(tokens["root"])
    for change in ("disable", "revoke-token"):
        refused = client.post(f"/api/v1/users/root/{change}", headers=root)
        assert refused.status_code == 409, refused.text
        assert "last active admin" in refused.json()["detail"]
    assert client.get("/api/v1/users", headers=root).status_code == 200  # still in
    second = client.post("/api/v1/users", headers=root, json={"name": "eve", "role": "admin"})
    assert second.status_code == 201, second.text
    eve = bearer(second.json()["token"])
    assert client.post("/api/v1/users/root/disable", headers=eve).status_code == 200
    last = client.post("/api/v1/users/eve/disable", headers=eve)
    assert last.status_code == 409
    assert client.post("/api/v1/users/eve/revoke-token", headers=eve).status_code == 409
    assert client.post("/api/v1/users/root/enable", headers=eve).status_code == 200
    assert client.post("/api/v1/users/eve/revoke-token", headers=root).status_code == 200


def test_a_form_field_sent_instead_of_a_file_is_told_plainly(
    client: TestClient, tokens: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "x", "files": "not a file"},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "files.0: must be a file"
    assert "<class" not in response.text
