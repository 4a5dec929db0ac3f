"""What the service commands of the CLI do: migrate, serve (API + embedded worker), run a
worker, create users, verify the audit log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from app.db import get_engine, session_factory
from app.events import ChainReport
from app.settings import get_settings

__all__ = ["create_user", "run_worker", "serve", "upgrade_database", "verify_events"]

ROOT = Path(__file__).resolve().parents[1]


def upgrade_database() -> None:
    from alembic import command
    from alembic.config import Config

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def create_user(name: str, role: str) -> str:
    from app.auth import create_user as create

    with session_factory()() as session:
        _, token = create(session, name, role)
        session.commit()
    return token


def verify_events() -> ChainReport:
    from app.events import verify_chain

    with session_factory()() as session:
        return verify_chain(session)


def run_worker(concurrency: int) -> int:
    from worker.celery_app import app

    argv = ["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "--pool=prefork"]
    if get_settings().embedded_broker:
        argv.append("--without-heartbeat")
    app.worker_main(argv)
    return 0


def serve(host: str, port: int, with_worker: bool) -> None:
    import uvicorn

    upgrade_database()
    worker = None
    if with_worker:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], start_new_session=True, env=os.environ
        )
    try:
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_level="info")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
