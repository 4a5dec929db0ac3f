"""Alembic environment: the URL and the metadata come from the application."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app import orm  # noqa: F401  (registers the tables)
from app.db import Base, engine_for
from app.settings import get_settings

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().db_url
    with engine_for(url).connect() as conn:
        run(conn)
