"""Authentication comes before the body: an upload with a missing or bad token, or the wrong
role, is refused with 401/403 before the body streams in. The app is driven through httpx's
ASGI transport, which hands the body to the app chunk by chunk only when the app asks for it,
so the chunks pulled are the bytes the server read. One visibility rule (``visible_to``) for
the models, image sets and audits: a submitter sees its own, an auditor or an admin all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.audits import repository as audits
from app.images import repository as images
from app.networks import repository as networks
from app.orm import ImageSet
from tests.app.conftest import bearer
from tests.app.test_pagination import T0, _audit, _network, _user

CHUNK = 2**20
#: the body: one file part that never ends, its bytes in chunks of 1 MiB after this head
HEAD = (
    b'--recon\r\nContent-Disposition: form-data; name="model"; filename="model.onnx"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)
#: 256 MiB announced: under the body limit, so only authentication can refuse it early
CHUNKS = 256


def _post(app: Any, path: str, headers: dict[str, str], chunks: int) -> tuple[httpx.Response, int]:
    """POST ``chunks`` MiB to ``path``; returns the response and how many chunks the app read."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield HEAD
        for _ in range(chunks):
            pulled += 1
            yield b"\0" * CHUNK

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(
                path,
                headers={
                    **headers,
                    "content-type": "multipart/form-data; boundary=recon",
                    "content-length": str(len(HEAD) + chunks * CHUNK),
                },
                content=body(),
            )

    return asyncio.run(send()), pulled


@pytest.mark.parametrize(
    ("path", "who", "status", "message"),
    [
        ("/api/v1/models", None, 401, "missing bearer token"),
        ("/api/v1/models", "ra_not-a-token", 401, "invalid token"),
        ("/api/v1/models", "ada", 403, "this needs the role submitter or admin"),
        ("/api/v1/images", "ada", 403, "this needs the role submitter or admin"),
        ("/api/v1/verify", None, 401, "missing bearer token"),
    ],
)
def test_uploads_are_refused_before_the_body_is_read(
    client: TestClient,
    tokens: dict[str, str],
    path: str,
    who: str | None,
    status: int,
    message: str,
) -> None:
    token = tokens.get(who or "", who)
    headers = bearer(token) if token else {}
    response, pulled = _post(client.app, path, headers, CHUNKS)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert pulled == 0, f"the server read {pulled} MiB before refusing"


def test_an_authorised_upload_is_read(client: TestClient, tokens: dict[str, str]) -> None:
    """The measure above is real: a submitter's (malformed) upload is read to its end."""
    response, pulled = _post(client.app, "/api/v1/models", bearer(tokens["alice"]), 8)
    assert response.status_code in (400, 422), response.text
    assert pulled == 8


def test_a_submitter_sees_its_own_models_image_sets_and_audits_an_auditor_all(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    alice, bob = _user(db, "alice"), _user(db, "bob")
    network, bobs = _network(db, alice, "m", T0), _network(db, bob, "b", T0)
    image_set = ImageSet(owner_id=alice.id, name="scans", images=[], created_at=T0)
    db.add(image_set)
    audit = _audit(db, network, T0)
    db.commit()
    for who, sees in (("alice", True), ("bob", False), ("ada", True), ("root", True)):
        user = _user(db, who)
        found = {
            "model": networks.visible(db, user, network.id),
            "image set": images.visible(db, user, image_set.id),
            "audit": audits.visible(db, user, audit.id),
            "audit's status": audits.status_of(db, user, audit.id),
        }
        assert {what: row is not None for what, row in found.items()} == dict.fromkeys(found, sees)
        # by name: among the caller's own sets only
        assert (images.visible(db, user, "scans") is not None) is (who == "alice")
        assert (network in networks.listed(db, user)) is sees
        assert (bobs in networks.listed(db, user)) is (who != "alice")
        headers = bearer(tokens[who])
        for path, made in (
            ("/api/v1/models", network.id),
            ("/api/v1/images", image_set.id),
            ("/api/v1/audits", audit.id),
        ):
            listed = [item["id"] for item in client.get(path, headers=headers).json()]
            assert (made in listed) is sees, (who, path)
            if path != "/api/v1/images":  # an image set has no GET of its own
                assert client.get(f"{path}/{made}", headers=headers).status_code == (
                    200 if sees else 404
                )
