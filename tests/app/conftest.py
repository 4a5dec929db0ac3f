"""Service fixtures: a real PostgreSQL database, migrated once per session with the project's
Alembic migration, each test in a transaction that is rolled back (the app's session joins it
through savepoints); users with tokens; a TestClient on the real app."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.auth import create_user
from app.db import engine_for, get_engine, sessions
from app.orm import Audit, Network, User
from app.settings import Settings, get_settings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: per test run, so that concurrent runs on one machine (a checkout and a CI clone) never meet
TEST_DB = f"recon_audit_test_{os.getpid()}"


def _recreate(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _use_settings(**env: str) -> dict[str, str | None]:
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    get_engine.cache_clear()
    return previous


def _restore(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    get_engine.cache_clear()


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def migrated(service_dir: Path) -> Iterator[Engine]:
    from app.service_cli import upgrade_database

    url = _recreate(TEST_DB)
    previous = _use_settings(DATABASE_URL=url, RECON_AUDIT_DATA_DIR=str(service_dir))
    upgrade_database()
    engine = engine_for(url)
    yield engine
    engine.dispose()
    _restore(previous)


@contextlib.contextmanager
def running_signer(log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``recon-audit signer`` for the settings of this process's environment, as a process of
    its own (the only one that reads the signing key), once it answers; stopped after."""
    from app.certificates.signer import SignerUnavailable, identity

    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "signer"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                identity(Settings())
                break
            except SignerUnavailable:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            # ended all the same (no process outlives the test), and the log shown: where it hung
            process.kill()
            process.wait()
            tail = log.read_text()[-3000:]
            raise AssertionError(f"the signer ignored SIGTERM for 30 s: {tail}") from exc


@pytest.fixture(scope="session")
def service_signer(
    request: pytest.FixtureRequest, service_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The signer process of the test service's data directory (its settings: ``migrated``)."""
    request.getfixturevalue("migrated")
    with running_signer(service_dir / "signer.log") as process:
        yield process


@pytest.fixture
def db(migrated: Engine) -> Iterator[Session]:
    connection = migrated.connect()
    transaction = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    yield session
    session.close()
    transaction.rollback()
    connection.close()


@pytest.fixture
def client(db: Session) -> Iterator[TestClient]:
    from app.main import create_app

    app = create_app()
    app.dependency_overrides[sessions] = lambda: db
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(db: Session) -> dict[str, str]:
    """One user per role (and a second submitter), by name -> token."""
    out = {}
    for name, role in (
        ("alice", "submitter"),
        ("bob", "submitter"),
        ("ada", "auditor"),
        ("root", "admin"),
    ):
        _, out[name] = create_user(db, name, role)
    db.commit()
    return out


def audit_row(session: Session, of: Audit | None = None, **fields: object) -> Audit:
    """A queued audit row (``fields`` override its columns), committed: of the network ``of`` is
    on, or of a new submitter's new network."""
    if of is None:
        user = User(name=f"owner-{secrets.token_hex(4)}", role="submitter", token_hash="0" * 64)
        session.add(user)
        session.flush()
        network = Network(
            owner_id=user.id,
            name="n",
            sha256="1" * 64,
            format="onnx",
            gradient_access="white-box",
            size_bytes=1,
            filename="model.onnx",
            manifest={},
            manifest_sha256="2" * 64,
            files=[],
            summary={},
        )
        session.add(network)
        session.flush()
        owner_id, network_id = user.id, network.id
    else:
        owner_id, network_id = of.owner_id, of.network_id
    columns: dict[str, object] = {
        "protocol_name": "quick",
        "protocol_version": "2",
        "protocol_sha256": "3" * 64,
        "protocol_yaml": "name: quick",
        "image_set": "builtin",
        **fields,
    }
    audit = Audit(owner_id=owner_id, network_id=network_id, **columns)
    session.add(audit)
    session.commit()
    return audit
