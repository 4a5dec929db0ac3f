"""The service's CLI commands on a database nobody has set up: the embedded default is migrated
first; a configured one that is empty, behind or unreachable is refused in one line (what to
run), exit status 2, no traceback, nothing written."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
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
        if get_engine.cache_info().currsize:  # the command made one (an unusable URL: none)
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


@pytest.mark.parametrize("args", [("serve", "--port", "1"), ("migrate",), ("worker",)])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "DATABASE_URL is set but empty"),
        ("postgres://postgres@127.0.0.1:5432/test", "write postgresql+psycopg://"),
        ("mysql://root@127.0.0.1/test", "names a mysql database"),
        ("not a url at all", "is not a database URL"),
    ],
    ids=["empty", "postgres-scheme", "mysql", "garbage"],
)
def test_an_unusable_database_url_is_one_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], url: str, expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    _refused_in_one_line(_invoke(*args), expected)
    assert not (data_dir / "recon-audit.db").exists()


def test_a_data_dir_that_is_a_file_is_one_line(data_dir: Path) -> None:
    data_dir.write_text("not a folder")
    for args in (("migrate",), ("admin", "verify-events"), ("serve", "--port", "1")):
        _refused_in_one_line(_invoke(*args), "RECON_AUDIT_DATA_DIR", "is not a folder")


@pytest.mark.usefixtures("empty_postgres")
def test_serve_refuses_an_empty_configured_database() -> None:
    """As the README says: migrations on a configured database are the operator's step."""
    result = _invoke("serve", "--no-worker", "--no-signer", "--port", "1")
    _refused_in_one_line(result, "recon-audit migrate", "none (empty)")
    assert _tables() == []


def _together(
    commands: list[list[str]], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """``commands`` (``recon-audit`` arguments) started at the same moment, each to its end."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    for process, args in zip(started, commands, strict=True):
        out, err = process.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


def test_commands_started_together_on_a_fresh_data_dir_all_come_up(data_dir: Path) -> None:
    """Migrations run one at a time (a lock file beside the database): ``migrate``, ``admin``
    commands and the worker's start started at the same moment each find the database at the
    latest revision (before: "table audit_events already exists", exit 2)."""
    env = {**os.environ}
    commands = [
        ["migrate"],
        ["admin", "create-user", "alice", "--role", "admin"],
        ["admin", "verify-events"],
        ["migrate"],
        ["admin", "create-user", "bob", "--role", "submitter"],
    ]
    for result in _together(commands, env):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        names = sorted(r[0] for r in connection.execute("SELECT name FROM users"))
    assert names == ["alice", "bob"]


@pytest.mark.usefixtures("empty_postgres")
def test_migrations_started_together_on_an_empty_postgresql_all_succeed() -> None:
    """Concurrent ``migrate`` on one empty PostgreSQL: an advisory lock serialises them."""
    results = _together([["migrate"]] * 3, {**os.environ})
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
    assert "audit_events" in _tables()
