"""Database engine, sessions and the declarative base (SQLAlchemy 2, typed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from sqlalchemy import JSON, DateTime, Dialect, Engine, TypeDecorator, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.settings import get_settings

__all__ = [
    "API_THREADS",
    "Base",
    "UTCDateTime",
    "engine_for",
    "get_engine",
    "session_factory",
    "sessions",
    "utcnow",
]

#: threads that run the API's sync endpoints and dependencies (the app sets anyio's limiter to
#: it), and requests that hold a session at a time (:func:`sessions`); the pool keeps as many
#: connections, plus an overflow for connections taken outside a request's session (/readyz)
API_THREADS = 40
POOL_OVERFLOW = 10
_admitted: RunVar[anyio.Semaphore] = RunVar("recon_audit_sessions")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always reads back an aware UTC datetime: PostgreSQL
    keeps the offset, SQLite stores none, so values are written in UTC and a naive value read
    there is UTC. Writing a naive datetime is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (the service stores UTC)")
        return value.astimezone(UTC)  # SQLite drops the offset: store the UTC time

    def process_result_value(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime(),
    }


def engine_for(url: str) -> Engine:
    pool = {"pool_size": API_THREADS, "max_overflow": POOL_OVERFLOW}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return engine_for(settings.db_url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return _sessionmaker(engine or get_engine())


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # one per engine: a sessionmaker makes a Session class of its own (costly per request)
    return sessionmaker(bind=engine, expire_on_commit=False)


def _admission() -> anyio.Semaphore:
    try:
        return _admitted.get()
    except LookupError:
        semaphore = anyio.Semaphore(API_THREADS)
        _admitted.set(semaphore)
        return semaphore


async def sessions() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, closed after the response.

    FastAPI runs a request's sync parts in turn on pool threads (dependencies, the endpoint,
    the response's validation), and a session keeps its connection from its first query to its
    end, between those threads too. So at most :data:`API_THREADS` requests hold a session at a
    time (the others wait here, on the event loop): each then finds a connection in the pool at
    once, and no thread ever waits for a connection held by a request that waits for a thread.
    """
    async with _admission():
        session = session_factory()()
        try:
            yield session
        finally:
            with anyio.CancelScope(shield=True):  # a client that went away still frees it
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
