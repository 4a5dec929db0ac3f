"""What the service commands of the CLI do: migrate, serve (API + embedded worker + signer), run
a worker or the signer, create users, verify the audit log, run the offline CA."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import get_engine, session_factory
from app.errors import Unavailable
from app.events import ChainReport, Head
from app.processes import die_with_parent
from app.settings import get_settings

__all__ = [
    "DatabaseNotReady",
    "ca_init",
    "change_user",
    "checkpoint",
    "create_user",
    "ensure_database",
    "issue_signer",
    "revoke_signer",
    "run_signer",
    "run_worker",
    "serve",
    "upgrade_database",
    "verify_events",
]

ROOT = Path(__file__).resolve().parents[1]


class DatabaseNotReady(Unavailable):
    """The database cannot be reached, or is not at the migrations' latest revision."""


def _alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


def _unreachable(exc: OperationalError) -> DatabaseNotReady:
    url = get_engine().url.render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return DatabaseNotReady(f"cannot reach the database {url}: {reason}")


#: the databases the service runs on, by the URL's scheme
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
#: the PostgreSQL advisory lock migrations hold (one migration at a time per database)
MIGRATION_LOCK = 7267002


def _check_configuration() -> None:
    """:class:`DatabaseNotReady`, in one line, for a data directory that is no folder or a
    ``DATABASE_URL`` the service cannot use (empty, malformed, another database)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    settings = get_settings()
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise DatabaseNotReady(f"RECON_AUDIT_DATA_DIR {settings.data_dir} is not a folder")
    url = settings.database_url
    if url is None:
        return
    if not url.strip():
        raise DatabaseNotReady(
            "DATABASE_URL is set but empty: unset it for the embedded SQLite, or give "
            "postgresql+psycopg://user@host:5432/database"
        )
    try:
        scheme = make_url(url).drivername
    except ArgumentError:
        raise DatabaseNotReady(
            "DATABASE_URL is not a database URL; give postgresql+psycopg://user@host:5432/database"
        ) from None
    if scheme == "postgres":
        raise DatabaseNotReady(
            "DATABASE_URL uses the scheme postgres://, which SQLAlchemy does not know; write "
            "postgresql+psycopg:// instead"
        )
    if scheme not in SCHEMES:
        raise DatabaseNotReady(
            f"DATABASE_URL names a {scheme.split('+')[0]} database; the service runs on "
            "PostgreSQL (postgresql+psycopg://...) or, with DATABASE_URL unset, the embedded "
            "SQLite"
        )


@contextlib.contextmanager
def _migration_lock() -> Iterator[None]:
    """One migration at a time: on the embedded SQLite a lock file beside the database (held
    by the kernel for its process), on PostgreSQL an advisory lock (taken in the migration's
    transaction: :func:`upgrade_database`)."""
    settings = get_settings()
    if settings.database_url is not None:
        yield
        return
    with open(settings.data_dir / "migrate.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def upgrade_database() -> None:
    """Bring the database to the latest revision (creating it, for the embedded SQLite), one
    process at a time: processes started together on a fresh data directory or an empty
    database each find it migrated (the first migrates, the others wait and find nothing to
    do)."""
    _check_configuration()
    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    config = _alembic_config()
    try:
        with _migration_lock(), get_engine().begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise _unreachable(exc) from exc


def ensure_database() -> None:
    """Before a command that uses the database: the embedded default (no ``DATABASE_URL``) is
    migrated; a configured database must already be at the latest revision (migrations are
    the operator's step there, ``recon-audit migrate``), else :class:`DatabaseNotReady`."""
    if get_settings().database_url is None:
        upgrade_database()
        return
    _check_configuration()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    try:
        with get_engine().connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise _unreachable(exc) from exc
    if current != head:
        raise DatabaseNotReady(
            f"the database is at revision {current or 'none (empty)'}, not the latest "
            f"({head}); run `recon-audit migrate` first"
        )


def create_user(name: str, role: str) -> str:
    from app.auth import create_user as create

    ensure_database()
    with session_factory()() as session:
        _, token = create(session, name, role)
        session.commit()
    return token


def change_user(key: str, change: str) -> str | None:
    """``rotate-token`` (returns the new token), ``revoke-token``, ``disable`` or ``enable`` the
    user named (or with the id) ``key``; logged with the actor ``admin``."""
    from app.users import service

    ensure_database()
    with session_factory()() as session:
        user = service.find_user(session, key)
        token = None
        if change == "rotate-token":
            token = service.rotate_token(session, user, actor="admin")
        elif change == "revoke-token":
            service.revoke_token(session, user, actor="admin")
        else:
            service.set_disabled(session, user, change == "disable", actor="admin")
        session.commit()
    return token


def checkpoint() -> tuple[Head, Path]:
    """Write a signed checkpoint of the audit log's current head (see :mod:`app.checkpoints`)."""
    from app import checkpoints
    from app.events import chain_head

    ensure_database()
    with session_factory()() as session:
        head = chain_head(session)
    return head, checkpoints.write(get_settings(), head, "recon-audit admin checkpoint")


def verify_events() -> ChainReport:
    """The chain, checked against the signed checkpoints and the head every stored certificate
    carries."""
    from app import checkpoints
    from app.events import verify_chain
    from app.storage import Store

    ensure_database()
    settings = get_settings()
    with session_factory()() as session:
        store = Store(settings.store_dir)
        anchors = checkpoints.read_all(settings)
        anchors += checkpoints.certificate_anchors(session, store)
        return verify_chain(session, anchors, store)


def run_signer() -> None:
    """The signer process (:mod:`app.certificates.signer`), logging to stderr."""
    import logging

    from app.certificates import signer

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    signer.run(get_settings())


def ca_init(folder: Path) -> dict[str, str]:
    """A new offline CA in ``folder`` (:mod:`app.certificates.authority`)."""
    from app.certificates.authority import init_ca
    from app.certificates.pki import fingerprint

    cert = init_ca(folder)
    return {
        "ca": str(folder),
        "subject": cert.subject.rfc4514_string(),
        "sha256": fingerprint(cert),
    }


def issue_signer(ca_folder: Path) -> dict[str, str | None]:
    """A new signer from the offline CA, installed in the service's pki folder."""
    from app.certificates.authority import issue_signer as issue
    from app.certificates.pki import fingerprint

    settings = get_settings()
    cert, retired = issue(ca_folder, settings)
    return {
        "pki": str(settings.pki_dir),
        "subject": cert.subject.rfc4514_string(),
        "sha256": fingerprint(cert),
        "retired_ca": retired,
    }


def revoke_signer(ca_folder: Path, sha256: str, reason: str) -> dict[str, object]:
    """Mark one of the offline CA's signers revoked in a new signed list."""
    from app.certificates.authority import revoke_signer as revoke

    signers = revoke(ca_folder, get_settings(), sha256, reason)
    return {"sequence": signers.sequence, "revoked": [e for e in signers.entries if e["revoked"]]}


def run_worker(concurrency: int) -> int:
    ensure_database()
    from app.queue import celery_app

    argv = ["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "--pool=prefork"]
    if get_settings().embedded_broker:
        argv.append("--without-heartbeat")
    celery_app().worker_main(argv)
    return 0


class _Stopped(Exception):
    """``serve`` got SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


WORKER_GRACE = 30.0
"""Seconds a stopped ``serve`` gives its worker's cold shutdown before killing its process
group."""


SIGNER_START = 60.0
"""Seconds ``serve`` waits for its signer process to answer on its socket."""
SIGNER_GRACE = 10.0
"""Seconds a stopped ``serve`` gives its signer to end before killing it."""


def serve(
    host: str,
    port: int,
    with_worker: bool,
    worker_grace: float = WORKER_GRACE,
    with_signer: bool = True,
) -> None:
    """The API (and a worker, and the signer process). On SIGTERM or SIGINT the worker is
    stopped (see :func:`_stop_worker`), then the signer, before ``serve`` dies of the signal it
    got; uvicorn re-raises the signal after its own shutdown, and our handler turns it into an
    exception so that the children are stopped first. Where ``serve`` dies without stopping
    them (SIGKILL), the worker and the signer get SIGKILL from the kernel (a parent-death
    signal), the worker's pool processes and their jailed runs in turn (each holds one for its
    own parent)."""
    import uvicorn

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    worker = signer = None
    try:
        ensure_database()
        if with_signer:
            signer = _start_signer()
        if with_worker:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                start_new_session=True,
                env=os.environ,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_level="info")
    except _Stopped as stopped:
        _stop_worker(worker, worker_grace)
        _stop_signer(signer)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped.signum, signal.SIG_DFL)
        signal.raise_signal(stopped.signum)
    finally:
        _stop_worker(worker, worker_grace)
        _stop_signer(signer)


def _start_signer() -> subprocess.Popen[bytes]:
    """``recon-audit signer`` as a child that dies with ``serve``, once it answers on its
    socket; :class:`~app.certificates.signer.SignerUnavailable` where it exits or stays silent
    (its log says why)."""
    from app.certificates.signer import SignerUnavailable, identity

    signer = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "signer"],
        start_new_session=True,
        env=os.environ,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    deadline = time.monotonic() + SIGNER_START
    while True:
        if signer.poll() is not None:
            raise SignerUnavailable(
                f"the signer process exited (status {signer.returncode}) before it listened"
            )
        try:
            source = identity(get_settings())["source"]
        except SignerUnavailable:
            if time.monotonic() > deadline:
                signer.kill()
                signer.wait()
                raise
            time.sleep(0.1)
            continue
        _say(f"signer process started (pid {signer.pid}, {source})")
        return signer


def _stop_signer(signer: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (it removes its socket), SIGKILL after :data:`SIGNER_GRACE` seconds."""
    if signer is None or signer.poll() is not None:
        return
    signer.terminate()
    try:
        signer.wait(timeout=SIGNER_GRACE)
    except subprocess.TimeoutExpired:
        signer.kill()
        signer.wait()
    _say(f"signer stopped (exit {signer.returncode})")


def _stop_worker(worker: subprocess.Popen[bytes] | None, grace: float) -> None:
    """Celery's cold shutdown (SIGQUIT): its pool is ended at once, with the audits it runs
    (their jailed runs die with their pool process) and their unacknowledged tasks go back to
    the queue (acknowledged late); SIGKILL to its process group after ``grace`` seconds, or at
    once on a second SIGTERM or SIGINT."""
    if worker is None or worker.poll() is not None:
        return

    def kill(_signum: int = signal.SIGKILL, _frame: object = None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, kill)
    started = time.monotonic()
    _say(f"stopping the worker (pid {worker.pid}, cold shutdown, {grace:g} s grace)")
    worker.send_signal(signal.SIGQUIT)
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _say(f"the worker did not stop within {grace:g} s: killing its process group")
        kill()
        worker.wait()
    _say(f"worker stopped after {time.monotonic() - started:.1f} s (exit {worker.returncode})")


def _say(message: str) -> None:
    """A line on ``serve``'s log, stamped like uvicorn's and Celery's."""
    stamp = datetime.now(UTC).isoformat(sep=" ", timespec="milliseconds")
    sys.stderr.write(f"[{stamp}] serve: {message}\n")
    sys.stderr.flush()
