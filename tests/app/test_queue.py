"""The queue: what the embedded broker's folder holds is read back as the tasks it carries
(the sweep for lost messages relies on it); a broker that redelivers itself reads None."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
