"""The jailed checks of uploads take slots: one per user at a time (429 while another of theirs
runs), ``max_inspections`` per host (503 while they are all taken), each with ``Retry-After``,
held across processes and released when their holder ends; a refused upload stores nothing."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import TooManyRequests, Unavailable
from app.inspections import _try_lock, inspection_slot, lock_files
from app.orm import User
from app.settings import Settings, get_settings
from tests.app.conftest import bearer


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client: TestClient, token: str, name: str) -> Any:
    return client.post(
        "/api/v1/images",
        headers=bearer(token),
        data={"name": name},
        files=[("files", ("a.png", _png()))],
    )


@contextmanager
def _held(paths: list[Path]) -> Iterator[None]:
    with ExitStack() as stack:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            assert _try_lock(path, stack)
        yield


def _user(db: Session, name: str) -> str:
    user = db.scalar(select(User).where(User.name == name))
    assert user is not None
    return user.id


def test_one_check_per_user_at_a_time(
    client: TestClient, tokens: dict[str, str], db: Session
) -> None:
    settings = get_settings()
    with _held([lock_files(settings, _user(db, "alice"))[0]]):
        busy = _post(client, tokens["alice"], "one")
        other = _post(client, tokens["bob"], "two")  # another user is not held up
    assert busy.status_code == 429, busy.text
    assert busy.headers["Retry-After"] == str(settings.inspection_retry_after)
    assert busy.json()["detail"].startswith("another upload of yours")
    assert other.status_code == 201, other.text
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert names == ["builtin"]  # the refused upload stored nothing
    assert _post(client, tokens["alice"], "one").status_code == 201


def test_a_few_checks_per_host_at_once(client: TestClient, tokens: dict[str, str]) -> None:
    settings = get_settings()
    slots = lock_files(settings, "anyone")[1]
    with _held(slots):
        busy = _post(client, tokens["alice"], "full")
    assert busy.status_code == 503, busy.text
    assert "Retry-After" in busy.headers
    with _held(slots[1:]):  # one slot free again
        assert _post(client, tokens["alice"], "free").status_code == 201


def test_slots_hold_across_processes_and_die_with_their_holder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_inspections=1)
    settings.locks_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom app.inspections import inspection_slot\n"
            "from app.settings import Settings\nfrom pathlib import Path\n"
            "with inspection_slot(Settings(data_dir=Path(sys.argv[1]), max_inspections=1), 'u'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(TooManyRequests):
            with inspection_slot(settings, "u"):
                pass
        with pytest.raises(Unavailable):
            with inspection_slot(settings, "another user"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with inspection_slot(settings, "u"):  # the kernel released the dead holder's locks
        pass
