"""No audit lost when the broker is down (a Redis server of the test's own, stopped and started
again): with the broker unreachable, a creation is refused with 503 and ``Retry-After`` and
stores nothing, so no quota is used; an audit stored but left unsent (the broker failed between
the commit and the send) does not count against the quota, and the workers' sweep sends it once
the broker is back."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import queue
from app.audits import lifecycle
from app.auth import create_user
from app.db import get_engine, session_factory
from app.orm import Audit, AuditEvent, Network
from app.settings import get_settings
from tests.app.conftest import bearer


class RedisServer:
    """A redis-server on a free port of its own, that the test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def messages(self) -> int:
        """Tasks waiting in the service's queue (every priority level)."""
        client = redis.Redis.from_url(self.url)
        name = get_settings().queue
        return sum(int(client.llen(key)) for key in client.scan_iter(f"{name}*"))


def _caches() -> None:
    get_settings.cache_clear()
    get_engine.cache_clear()
    queue.celery_app.cache_clear()


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """The embedded database, and a Redis of the test's own as the broker (running)."""
    from app.service_cli import upgrade_database

    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BROKER_URL", server.url)
    monkeypatch.setenv("RECON_AUDIT_MAX_ACTIVE_AUDITS", "2")
    monkeypatch.setenv("RECON_AUDIT_OUTBOX_GRACE_SECONDS", "0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("RECON_AUDIT_DATABASE_URL", raising=False)
    _caches()
    upgrade_database()
    try:
        yield server
    finally:
        server.stop()
        get_engine().dispose()
        _caches()


def _user_and_model() -> tuple[str, str]:
    with session_factory()() as session:
        user, token = create_user(session, f"sam-{secrets.token_hex(3)}", "submitter")
        network = Network(
            owner_id=user.id, name="n", sha256="1" * 64, format="onnx",
            gradient_access="white-box", size_bytes=1, filename="model.onnx",
            manifest={"image_size": [32, 32]}, manifest_sha256="2" * 64, files=[], summary={},
        )  # fmt: skip
        session.add(network)
        session.commit()
        return token, network.id


def _stored() -> tuple[int, int]:
    """Audits stored, and ``audit.created`` events."""
    with session_factory()() as session:
        audits = session.scalar(select(func.count()).select_from(Audit)) or 0
        created = session.scalar(select(func.count()).where(AuditEvent.action == "audit.created"))
        return int(audits), int(created or 0)


def _create(client: TestClient, token: str, model_id: str) -> tuple[int, dict[str, object]]:
    response = client.post(
        "/api/v1/audits",
        headers=bearer(token),
        json={"model_id": model_id, "protocol": "quick"},
    )
    if response.status_code == 503:
        assert response.headers["Retry-After"] == str(get_settings().broker_retry_after)
    return response.status_code, response.json()


def test_a_broker_that_is_down_refuses_the_audit_and_keeps_no_quota(
    broker: RedisServer,
) -> None:
    from app.main import create_app

    token, model_id = _user_and_model()
    with TestClient(create_app()) as client:
        assert _create(client, token, model_id)[0] == 202
        assert broker.messages() == 1
        broker.stop()
        for _ in range(3):  # more than the limit of 2: none of them counts
            status, body = _create(client, token, model_id)
            assert status == 503, body
            assert set(body) == {"detail", "field"}
            assert "nothing was stored" in str(body["detail"])
        assert _stored() == (1, 1)
        broker.start()  # a fresh server: the first message went with the old one
        assert _create(client, token, model_id)[0] == 202  # the quota is 2: nothing was used
        assert broker.messages() == 1
        assert _create(client, token, model_id)[0] == 429


def test_an_audit_left_unsent_is_sent_by_the_sweep(
    broker: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.main import create_app

    token, model_id = _user_and_model()
    real = queue.enqueue_audit

    def broker_fails_after_the_commit(_audit_id: str) -> None:
        raise ConnectionError("the broker went away")

    with TestClient(create_app()) as client:
        monkeypatch.setattr(queue, "enqueue_audit", broker_fails_after_the_commit)
        status, body = _create(client, token, model_id)
        assert status == 202, body  # stored: the sweep will send it
        monkeypatch.setattr(queue, "enqueue_audit", real)
        assert broker.messages() == 0
        assert _create(client, token, model_id)[0] == 202  # the unsent one does not count
        assert _create(client, token, model_id)[0] == 202
        assert _create(client, token, model_id)[0] == 429
    assert broker.messages() == 2
    with session_factory()() as session:
        unsent = session.scalars(select(Audit).where(Audit.enqueued.is_(False))).all()
        assert [a.id for a in unsent] == [body["id"]]
    broker.stop()
    assert lifecycle.send_outbox() == 0  # still down: left for the next sweep
    broker.start()
    assert lifecycle.send_outbox() == 1
    assert broker.messages() == 1
    with session_factory()() as session:
        assert session.get_one(Audit, str(body["id"])).enqueued
    assert lifecycle.send_outbox() == 0  # sent once
