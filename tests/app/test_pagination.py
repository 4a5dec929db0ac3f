"""Keyset pagination of every list: stable order across pages (ties on the time broken by the
id), the next cursor in X-Next-Cursor and Link, bad cursors and limits refused with 422."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import Audit, ImageSet, Network, User
from tests.app.conftest import bearer

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _network(db: Session, owner: User, name: str, at: datetime) -> Network:
    network = Network(
        owner_id=owner.id,
        name=name,
        sha256=name.ljust(64, "0"),
        format="onnx",
        gradient_access="white-box",
        size_bytes=1,
        filename="model.onnx",
        manifest={"image_size": [64, 64], "big": "x" * 10_000},
        manifest_sha256="0" * 64,
        files=[],
        summary={},
        created_at=at,
    )
    db.add(network)
    db.flush()
    return network


def _audit(db: Session, network: Network, at: datetime) -> Audit:
    """A queued audit of ``network`` by its owner."""
    audit = Audit(
        owner_id=network.owner_id,
        network_id=network.id,
        protocol_name="quick",
        protocol_version="1",
        protocol_sha256="0" * 64,
        protocol_yaml="name: quick\n",
        image_set="builtin",
        created_at=at,
    )
    db.add(audit)
    return audit


def _user(db: Session, name: str) -> User:
    user = db.scalars(select(User).where(User.name == name)).one()
    return user


def _pages(
    client: TestClient, path: str, token: str, limit: int, query: str = ""
) -> list[list[dict[str, object]]]:
    pages, url = [], f"{path}?limit={limit}{query}"
    while True:
        response = client.get(url, headers=bearer(token))
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            return pages
        assert response.headers["Link"].endswith('>; rel="next"')
        assert f"cursor={cursor}" in response.headers["Link"]
        url = f"{path}?limit={limit}{query}&cursor={cursor}"


def test_audits_page_in_a_stable_order(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    alice = _user(db, "alice")
    network = _network(db, alice, "m", T0)
    # three audits share one created_at: the id breaks the tie
    times = [T0, T0, T0, T0.replace(minute=1), T0.replace(minute=2)]
    for at in times:
        _audit(db, network, at)
    db.commit()
    expected = [
        a.id
        for a in db.scalars(
            select(Audit)
            .where(Audit.owner_id == alice.id)
            .order_by(Audit.created_at.desc(), Audit.id.desc())
        )
    ]
    pages = _pages(client, "/api/v1/audits", tokens["alice"], 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [a["id"] for p in pages for a in p] == expected
    assert pages[0][0]["created_at"] == "2026-12-01T12:02:00Z"
    # the filter applies on every page
    queued = _pages(client, "/api/v1/audits", tokens["alice"], 3, "&status=queued")
    assert [a["id"] for p in queued for a in p] == expected
    assert client.get("/api/v1/audits?status=done", headers=bearer(tokens["alice"])).json() == {
        "detail": "status: Input should be 'queued', 'running', 'succeeded', 'failed' or "
        "'cancelled'",
        "field": "status",
    }


def test_model_lists_hold_summaries_without_the_manifest(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    alice = _user(db, "alice")
    made = [_network(db, alice, f"m{i}", T0.replace(second=i)) for i in range(3)]
    db.commit()
    pages = _pages(client, "/api/v1/models", tokens["alice"], 2)
    assert [m["id"] for p in pages for m in p] == [n.id for n in reversed(made)]
    first = pages[0][0]
    assert "manifest" not in first
    assert "summary" not in first
    assert first["manifest_sha256"] == "0" * 64
    whole = client.get(f"/api/v1/models/{first['id']}", headers=bearer(tokens["alice"])).json()
    assert whole["manifest"]["big"] == "x" * 10_000


def test_image_sets_start_with_the_builtin_set(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    alice = _user(db, "alice")
    for i in range(3):
        db.add(ImageSet(owner_id=alice.id, name=f"s{i}", images=[], created_at=T0))
    db.commit()
    pages = _pages(client, "/api/v1/images", tokens["alice"], 2)
    names = [str(s["name"]) for p in pages for s in p]
    assert names[0] == "builtin"
    assert sorted(names[1:]) == ["s0", "s1", "s2"]
    assert [len(p) for p in pages] == [3, 1]


def test_users_page_by_name(client: TestClient, tokens: dict[str, str]) -> None:
    pages = _pages(client, "/api/v1/users", tokens["root"], 3)
    assert [u["name"] for p in pages for u in p] == ["ada", "alice", "bob", "root"]
    assert {u["role"] for p in pages for u in p} == {"admin", "auditor", "submitter"}


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("limit=0", "limit", "limit: Input should be greater than or equal to 1"),
        ("limit=201", "limit", "limit: Input should be less than or equal to 200"),
        (
            "limit=x",
            "limit",
            "limit: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("cursor=nope", "cursor", "invalid cursor: pass a list's X-Next-Cursor as is"),
        ("cursor=WyJ4Il0", "cursor", "invalid cursor: pass a list's X-Next-Cursor as is"),
        ("cursor=WzEsIDJd", "cursor", "invalid cursor: pass a list's X-Next-Cursor as is"),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/audits", "/api/v1/models", "/api/v1/images"])
def test_bad_limits_and_cursors_are_422(
    client: TestClient, tokens: dict[str, str], path: str, query: str, field: str, message: str
) -> None:
    response = client.get(f"{path}?{query}", headers=bearer(tokens["alice"]))
    assert response.status_code == 422
    assert response.json() == {"detail": message, "field": field}
