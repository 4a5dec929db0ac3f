"""The service's CLI commands on a database nobody has set up: the embedded default is migrated
first; a configured one that is empty, behind or unreachable is refused in one line (what to
run), exit status 2, no traceback, nothing written."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from app.cli import main
from app.db import get_engine
from app.settings import get_settings
from tests.app.conftest import PG_ADMIN, _recreate

#: per test run, as tests/app/conftest.py's
EMPTY_DB = f"recon_audit_first_run_{os.getpid()}"


def _invoke(*args: str) -> Result:
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        get_engine().dispose()
        get_settings.cache_clear()
        get_engine.cache_clear()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    for key in ("DATABASE_URL", "RECON_AUDIT_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "data"


@pytest.fixture
def empty_postgres(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A new, empty PostgreSQL database as DATABASE_URL; the data directory."""
    monkeypatch.setenv("DATABASE_URL", _recreate(EMPTY_DB))
    yield data_dir
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {EMPTY_DB} WITH (FORCE)")


def _tables() -> list[str]:
    with psycopg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{EMPTY_DB}") as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return sorted(row[0] for row in rows)


def _refused_in_one_line(result: Result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    for text in expected:
        assert text in lines[0]


def test_create_user_on_a_new_embedded_data_dir_migrates_first(data_dir: Path) -> None:
    result = _invoke("admin", "create-user", "alice", "--role", "admin")
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("ra_")
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        assert connection.execute("SELECT name, role FROM users").fetchall() == [("alice", "admin")]
    again = _invoke("admin", "create-user", "alice", "--role", "admin")
    _refused_in_one_line(again, "exists")
    verified = _invoke("admin", "verify-events")
    assert verified.exit_code == 0, verified.output
    assert '"valid": true' in verified.output


def test_verify_events_on_a_new_embedded_data_dir(data_dir: Path) -> None:
    result = _invoke("admin", "verify-events")
    assert result.exit_code == 0, result.output
    assert '"events": 0' in result.output
    assert (data_dir / "recon-audit.db").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ("admin", "create-user", "alice", "--role", "admin"),
        ("admin", "verify-events"),
        ("worker",),
    ],
)
def test_an_unmigrated_configured_database_is_refused(
    empty_postgres: Path, args: tuple[str, ...]
) -> None:
    result = _invoke(*args)
    _refused_in_one_line(result, "recon-audit migrate", "none (empty)")
    assert _tables() == []  # nothing written, no table made
    assert not (empty_postgres / "recon-audit.db").exists()  # nor an embedded database


@pytest.mark.usefixtures("empty_postgres")
def test_migrate_then_create_user_on_a_configured_database() -> None:
    assert _invoke("migrate").exit_code == 0
    result = _invoke("admin", "create-user", "alice", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert "users" in _tables()


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("args", [("admin", "verify-events"), ("worker",), ("migrate",)])
def test_an_unreachable_database_is_one_line(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres:secret@127.0.0.1:1/none")
    result = _invoke(*args)
    _refused_in_one_line(result, "cannot reach the database", "postgres:***@127.0.0.1:1/none")
    assert "secret" not in result.output
