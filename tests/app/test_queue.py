"""The queue: what the embedded broker's folder holds is read back as the tasks it carries
(the sweep for lost messages relies on it); a broker that redelivers itself reads None."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app import queue
from app.settings import get_settings


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BROKER_URL", raising=False)
    get_settings.cache_clear()
    queue.celery_app.cache_clear()
    yield get_settings().broker_folder / "queue"
    get_settings.cache_clear()
    queue.celery_app.cache_clear()


def test_the_embedded_queue_is_read_back_as_its_tasks(embedded: Path) -> None:
    assert queue.waiting() == set()
    queue.enqueue_audit("a1")
    queue.enqueue_shard("a2", "structural")
    (embedded / f"0_torn.{get_settings().queue}.msg").write_text('{"body": ')  # being written
    (embedded / f"1_other.{get_settings().queue}.msg").write_text('{"headers": {}}')
    assert queue.waiting() == {("a1", None), ("a2", "structural")}


def test_a_redelivering_broker_has_no_waiting_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_URL", "redis://127.0.0.1:6379/15")
    get_settings.cache_clear()
    try:
        assert queue.waiting() is None
    finally:
        get_settings.cache_clear()


def test_shard_priorities_interleave_audits() -> None:
    # an audit's shards in order, its owner's other running audits later still, capped
    assert [queue.priority(k) for k in (0, 1, 2, 30)] == [0, 1, 2, queue.PRIORITIES - 1]
    assert queue.priority(1, backlog=2) == 3
    assert queue.priority(0, backlog=-1) == 0


def test_redis_delivers_shards_by_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Redis a message of a higher priority (a smaller number) is taken first, whatever
    was sent before it: a quick audit's first shard overtakes a standard audit's later ones."""
    name = f"test-priority-{os.getpid()}"
    monkeypatch.setenv("BROKER_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("RECON_AUDIT_QUEUE", name)
    get_settings.cache_clear()
    queue.celery_app.cache_clear()
    try:
        assert get_settings().queue == name
        for k in range(3, 6):
            queue.enqueue_shard("standard", f"perturbation/{k}", position=k)
        queue.enqueue_shard("quick", "perturbation", position=0)
        taken = []
        with queue.celery_app().connection_for_read() as connection:
            inbox = connection.SimpleQueue(name)
            for _ in range(4):
                message = inbox.get(timeout=5)
                taken.append(tuple(message.payload[0]))
                message.ack()
            inbox.close()
        assert taken == [
            ("quick", "perturbation"),
            ("standard", "perturbation/3"),
            ("standard", "perturbation/4"),
            ("standard", "perturbation/5"),
        ]
    finally:
        server = redis.Redis.from_url("redis://127.0.0.1:6379/15")
        for key in [*server.scan_iter(f"{name}*"), *server.scan_iter(f"_kombu.binding*.{name}")]:
            server.delete(key)
        get_settings.cache_clear()
        queue.celery_app.cache_clear()
