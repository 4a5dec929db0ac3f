"""The active-audit limit holds under concurrent creations, on SQLite (a file database) and on
PostgreSQL: each request's count is read after it holds the user's row (PostgreSQL) or the
database's write lock (SQLite), in the transaction that inserts the audit."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.auth import create_user
from app.db import get_engine, session_factory
from app.events import verify_chain
from app.orm import ACTIVE, Audit, Network
from app.service_cli import upgrade_database
from tests.app.conftest import PG_ADMIN, _recreate, _restore, _use_settings, bearer
from tests.app.networks.test_router import MANIFEST

LIMIT, ACTIVE_BEFORE, REQUESTS = 10, 2, 20


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """A migrated database of its own (its rows are committed) and the settings that use it."""
    name = f"recon_audit_limit_{os.getpid()}"
    if request.param == "postgresql":
        url = _recreate(name)
    else:
        url = f"sqlite:///{tmp_path / 'recon-audit.db'}"
    previous = _use_settings(
        DATABASE_URL=url,
        RECON_AUDIT_DATA_DIR=str(tmp_path),
        RECON_AUDIT_MAX_ACTIVE_AUDITS=str(LIMIT),
    )
    upgrade_database()
    yield
    get_engine().dispose()
    _restore(previous)
    if request.param == "postgresql":
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _network_with_active_audits(count: int) -> tuple[str, str]:
    """A submitter's network with ``count`` queued audits: (its token, the network's id)."""
    with session_factory()() as session:
        user, token = create_user(session, "quota", "submitter")
        network = Network(
            owner_id=user.id,
            name="n",
            sha256="1" * 64,
            format="onnx",
            gradient_access="white-box",
            size_bytes=1,
            filename="model.onnx",
            manifest=MANIFEST,
            manifest_sha256="2" * 64,
            files=[],
            summary={},
        )
        session.add(network)
        session.flush()
        for _ in range(count):
            session.add(
                Audit(
                    owner_id=user.id,
                    network_id=network.id,
                    protocol_name="quick",
                    protocol_version="2",
                    protocol_sha256="3" * 64,
                    protocol_yaml="name: quick",
                    image_set="builtin",
                )
            )
        session.commit()
        return token, network.id


@pytest.mark.usefixtures("service")
def test_concurrent_creations_stop_at_the_limit() -> None:
    from app.main import create_app

    token, network_id = _network_with_active_audits(ACTIVE_BEFORE)
    start = threading.Barrier(REQUESTS)
    with TestClient(create_app()) as client, ThreadPoolExecutor(REQUESTS) as pool:

        def create(_: int) -> tuple[int, dict[str, Any]]:
            start.wait()
            response = client.post(
                "/api/v1/audits", headers=bearer(token), json={"model_id": network_id}
            )
            return response.status_code, response.json()

        responses = list(pool.map(create, range(REQUESTS)))
    codes = Counter(code for code, _ in responses)
    accepted = LIMIT - ACTIVE_BEFORE
    assert codes == {202: accepted, 429: REQUESTS - accepted}, responses
    refused = next(body for code, body in responses if code == 429)
    assert f"the most allowed at once is {LIMIT}" in refused["detail"]
    with session_factory()() as session:
        active = session.scalar(
            select(func.count()).select_from(Audit).where(Audit.status.in_(ACTIVE))
        )
        assert active == LIMIT
        # the audit log's chain was appended to one request after the other: not forked
        assert verify_chain(session).valid
