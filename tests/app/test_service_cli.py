"""The operator's user commands on the embedded database: rotate and revoke a token, disable
and enable a user; each is logged, and the chain still verifies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.auth import token_hash
from tests.app.test_first_run import _invoke


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    for key in ("DATABASE_URL", "RECON_AUDIT_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "data"


def _row(data_dir: Path) -> tuple[str, str | None]:
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        row = connection.execute("SELECT token_hash, disabled_at FROM users").fetchone()
    return row[0], row[1]


def test_token_and_user_commands(data_dir: Path) -> None:
    first = _invoke("admin", "create-user", "alice", "--role", "auditor").output.strip()
    rotated = _invoke("admin", "rotate-token", "alice")
    assert rotated.exit_code == 0, rotated.output
    token = rotated.output.strip()
    assert token.startswith("ra_")
    assert token != first
    assert _row(data_dir)[0] == token_hash(token)
    assert _invoke("admin", "revoke-token", "alice").exit_code == 0
    assert _row(data_dir)[0] not in (token_hash(first), token_hash(token))
    assert _invoke("admin", "disable-user", "alice").exit_code == 0
    assert _row(data_dir)[1] is not None
    assert _invoke("admin", "enable-user", "alice").exit_code == 0
    assert _row(data_dir)[1] is None
    missing = _invoke("admin", "disable-user", "nobody")
    assert missing.exit_code == 2
    assert missing.output.strip() == "Error: no user nobody"
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        actions = [a for (a,) in connection.execute("SELECT action FROM audit_events ORDER BY id")]
    assert actions == [
        "user.created",
        "user.token_rotated",
        "user.token_revoked",
        "user.disabled",
        "user.enabled",
    ]
    assert '"valid": true' in _invoke("admin", "verify-events").output
