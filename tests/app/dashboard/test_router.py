"""The dashboards over HTTP (no browser): a cancelled audit is listed and filtered by its
status; a disabled user's cookie, and a rotated token, lead back to the sign-in page."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.audits.test_router import model_id
from tests.app.conftest import bearer

__all__ = ["model_id"]  # the fixture, shared with the audits' tests


def _sign_in(client: TestClient, token: str) -> int:
    response = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    return response.status_code


def test_cancelled_audits_are_listed_and_disabled_users_signed_out(
    client: TestClient, tokens: dict[str, str], model_id: str
) -> None:
    audit = client.post(
        "/api/v1/audits", headers=bearer(tokens["alice"]), json={"model_id": model_id}
    ).json()["id"]
    client.post(f"/api/v1/audits/{audit}/cancel", headers=bearer(tokens["alice"]))
    assert _sign_in(client, tokens["alice"]) == 303
    listed = client.get("/ui/audits?status=cancelled")
    assert listed.status_code == 200
    assert f"/ui/audits/{audit}" in listed.text
    assert '<span class="badge cancelled">cancelled</span>' in listed.text
    assert client.get(f"/ui/audits/{audit}").status_code == 200
    assert client.post("/api/v1/users/alice/disable", headers=bearer(tokens["root"])).is_success
    signed_out = client.get("/ui/audits", follow_redirects=False)
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/ui/login"
    refused = client.post("/ui/login", data={"token": tokens["alice"]})
    assert "invalid token" in refused.text
    client.post("/api/v1/users/alice/enable", headers=bearer(tokens["root"]))
    token = client.post("/api/v1/users/alice/rotate-token", headers=bearer(tokens["root"]))
    assert _sign_in(client, tokens["alice"]) == 200  # the sign-in page again, with its error
    assert _sign_in(client, token.json()["token"]) == 303
