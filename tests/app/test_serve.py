"""``recon-audit serve`` (embedded: SQLite and the filesystem broker) stops its worker and its
signer process when it is stopped (SIGTERM, SIGINT), and they die with it when it is killed
(SIGKILL); so do the jailed runs of an audit in progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app.processes import alive, descendants
from app.service_cli import WORKER_GRACE
from tests.worker.test_tasks import _free_port, _service, _upload


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], set[int]]:
    """``serve`` on a free port, once /healthz answers, its signer process runs and its worker
    has its pool process: the process and every process under it."""
    env = {**os.environ, "RECON_AUDIT_DATA_DIR": str(tmp_path / "data")}
    for key in ("DATABASE_URL", "BROKER_URL"):
        env.pop(key, None)
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 120
    healthy = False
    tree: set[int] = set()
    try:
        while len(tree) < 3 or not healthy:  # the signer, the worker and its pool process
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not come up"
            if not healthy:
                try:
                    healthy = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
            tree = descendants(serve.pid)
        assert _signer(tree) is not None
    except BaseException:
        _kill(serve, tree | descendants(serve.pid))
        raise
    return serve, tree


def _signer(tree: set[int]) -> int | None:
    """The pid of the signer process (``python -m app.cli signer``) in ``tree``."""
    for pid in tree:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command[1:4] == [b"-m", b"app.cli", b"signer"]:
            return pid
    return None


def _kill(serve: subprocess.Popen[bytes], tree: set[int]) -> None:
    for pid in (serve.pid, *tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    serve.wait()


STOPPED_WITHIN = WORKER_GRACE + 15
"""Seconds a stopped ``serve`` may take to end: its worker's grace, then killing it, and
uvicorn's own shutdown, on a loaded machine."""


def _gone(serve: subprocess.Popen[bytes], tree: set[int], seconds: float, log: Path) -> set[int]:
    """The processes of ``tree`` still running ``seconds`` after ``serve`` ended (``serve``
    must end within them; else the test fails with the end of its log)."""
    deadline = time.monotonic() + seconds
    sent = datetime.now(UTC).isoformat(sep=" ", timespec="milliseconds")
    try:
        serve.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"serve did not end within {seconds} s of the signal sent at {sent}:\n{tail}")
    while (left := {pid for pid in tree if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_service_stops_its_worker(tmp_path: Path, signum: int) -> None:
    serve, tree = _start(tmp_path)
    try:
        serve.send_signal(signum)
        left = _gone(serve, tree, STOPPED_WITHIN, tmp_path / "serve.log")
        assert not left, f"still running after {signum!r}: {sorted(left)}"
        assert serve.returncode == -signum  # it dies of the signal it got, after the worker
        assert "signer stopped (exit 0)" in (tmp_path / "serve.log").read_text()
        assert not (tmp_path / "data" / "signer.sock").exists()  # the signer removed it
    finally:
        _kill(serve, tree)


def test_the_worker_dies_with_a_killed_service(tmp_path: Path) -> None:
    serve, tree = _start(tmp_path)
    try:
        serve.kill()
        left = _gone(serve, tree, 10, tmp_path / "serve.log")
        assert not left, f"still running after SIGKILL: {sorted(left)}"
    finally:
        _kill(serve, tree)


def _jailed_audit_running(tree: set[int]) -> bool:
    commands = []
    for pid in tree:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue
    return any(c[0].endswith(b"bwrap") for c in commands) and any(b"audit" in c for c in commands)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_an_audit_in_progress_ends_with_the_service(tmp_path: Path, signum: int) -> None:
    svc = _service(tmp_path, "embedded")
    svc.start("api", "serve", "--port", str(svc.port))
    serve = svc.processes["api"]
    try:
        svc.wait_ready()
        token = svc.cli("admin", "create-user", "alice", "--role", "submitter")
        created = httpx.post(
            f"{svc.url}/api/v1/audits",
            headers={"Authorization": f"Bearer {token}"},
            json={"model_id": _upload(svc, token)},
        )
        assert created.status_code == 202, created.text
        deadline = time.monotonic() + 120
        while not _jailed_audit_running(tree := descendants(serve.pid)):
            assert time.monotonic() < deadline, f"no jailed audit started; see {svc.logs}"
            time.sleep(0.2)
        serve.send_signal(signum)
        left = _gone(serve, tree, STOPPED_WITHIN, svc.logs / "api.log")
        assert not left, f"still running after {signum!r}: {sorted(left)}"
    finally:
        svc.stop()
