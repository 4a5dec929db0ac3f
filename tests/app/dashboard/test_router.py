"""The dashboards over HTTP (no browser): a cancelled audit is listed and filtered by its
status; a disabled user's cookie, and a rotated token, lead back to the sign-in page; signed
out, every page redirects there and the live parts answer 401 or 404."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("cookie", [None, "ra_unknown"])
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ui/audits", 303),
        ("GET", "/ui/audits/rows", 401),
        ("GET", "/ui/audits/a1", 303),
        ("POST", "/ui/audits/a1/approve", 303),
        ("GET", "/ui/audits/a1/status", 404),
        ("GET", "/ui/audits/a1/files/report.pdf", 404),
        ("GET", "/ui/compare", 303),
        ("GET", "/ui/models", 303),
        ("GET", "/ui/models/m1", 303),
    ],
)
def test_signed_out_pages_redirect_to_the_sign_in_and_live_parts_refuse(
    client: TestClient, tokens: dict[str, str], method: str, path: str, status: int, cookie: str
) -> None:
    if cookie:
        client.cookies.set("recon_audit_token", cookie)
    data = {"token": tokens["ada"]} if method == "POST" else None
    response = client.request(method, path, data=data, follow_redirects=False)
    assert response.status_code == status
    assert response.content == b""
    assert response.headers.get("location") == ("/ui/login" if status == 303 else None)
