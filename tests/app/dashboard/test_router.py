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
        ("POST", "/ui/audits/a1/cancel", 303),
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


def test_an_audit_is_cancelled_from_its_page_by_its_owner_or_an_admin(
    client: TestClient, tokens: dict[str, str], model_id: str
) -> None:
    def queued() -> str:
        created = client.post(
            "/api/v1/audits", headers=bearer(tokens["alice"]), json={"model_id": model_id}
        )
        return str(created.json()["id"])

    audit = queued()
    assert _sign_in(client, tokens["ada"]) == 303  # an auditor: sees it, may not cancel it
    page = client.get(f"/ui/audits/{audit}")
    assert 'id="cancel-form"' not in page.text
    refused = client.post(f"/ui/audits/{audit}/cancel")
    assert "only the audit's owner or an admin may cancel it" in refused.text
    assert 'id="audit-status">queued<' in refused.text
    assert _sign_in(client, tokens["bob"]) == 303  # another submitter: no such audit
    assert "audit " + audit in client.post(f"/ui/audits/{audit}/cancel").text
    for canceller in ("alice", "root"):
        audit = queued()
        assert _sign_in(client, tokens[canceller]) == 303
        assert 'id="cancel-form"' in client.get(f"/ui/audits/{audit}").text
        done = client.post(f"/ui/audits/{audit}/cancel")
        assert done.status_code == 200
        assert 'id="audit-status">cancelled<' in done.text
        assert 'id="cancel-form"' not in done.text
        assert "cancelled: a worker running it stops" in done.text
        again = client.post(f"/ui/audits/{audit}/cancel")
        assert "is finished already" in again.text
