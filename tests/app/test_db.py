"""Datetimes read back aware and in UTC from both databases; naive ones are never stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from app.db import Base, engine_for
from app.orm import User


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "postgresql":
        migrated: Engine = request.getfixturevalue("migrated")
        return migrated
    engine = engine_for(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    return engine


def test_datetimes_come_back_aware_in_utc(engine: Engine) -> None:
    at = datetime(2026, 12, 1, 13, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    with Session(engine) as session, session.begin():
        session.add(User(name="tz-check", role="admin", token_hash="f" * 64, created_at=at))
        session.flush()
        session.expire_all()
        user = session.scalars(select(User).where(User.name == "tz-check")).one()
        assert user.created_at == at
        assert user.created_at.tzinfo is UTC
        session.rollback()


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(
            User(name="naive", role="admin", token_hash="e" * 64, created_at=datetime(2026, 1, 1))
        )
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()
