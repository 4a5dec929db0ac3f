from __future__ import annotations

from fastapi.testclient import TestClient

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
