"""Pollers of an audit's status against a real ``recon-audit serve --no-worker`` on loopback.

Starts the service on a temporary data directory (embedded SQLite by default, or
``--database-url``), creates a user, a model row and an audit row, then runs 1, 10, 50 and 200
concurrent pollers of ``GET /api/v1/audits/{id}``, one request every ``--interval`` seconds
each (a dashboard's refresh, started at random phases; 0: back to back), each sending the last
ETag in ``If-None-Match`` as a browser would, and prints p50/p95/p99 latency and the errors
per level. Ends the service (and checks that nothing it started is left) before exiting.

    python -m benchmarks.load [--clients 1,10,50,200] [--seconds 8] [--interval 1]
                              [--database-url postgresql+psycopg://... (an empty database)]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.processes import alive, descendants, die_with_parent

ROOT = Path(__file__).resolve().parents[1]
#: one request's whole time (s), queueing included: slower counts as an error
REQUEST_TIMEOUT = 10.0


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=1000, method="inclusive")[int(q * 10) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(database_url: str) -> tuple[str, str]:
    """A submitter, a model row and a running audit row, straight into the service's database
    (no upload: the benchmark measures reads). Returns ``(token, audit_id)``."""
    from app.auth import create_user
    from app.db import engine_for, session_factory
    from app.orm import Audit, Network

    engine = engine_for(database_url)
    try:
        with session_factory(engine)() as session:
            user, token = create_user(session, f"load-{uuid.uuid4().hex[:8]}", "submitter")
            network = Network(
                owner_id=user.id,
                name="load",
                sha256="0" * 64,
                format="onnx",
                gradient_access="white-box",
                size_bytes=1,
                filename="model.onnx",
                manifest={"image_size": [64, 64]},
                manifest_sha256="0" * 64,
                files=[],
                summary={},
            )
            session.add(network)
            session.flush()
            audit = Audit(
                owner_id=user.id,
                network_id=network.id,
                protocol_name="quick",
                protocol_version="1",
                protocol_sha256="0" * 64,
                protocol_yaml="name: quick\n",
                image_set="builtin",
                status="running",
                stage="perturbation",
                percent=42.0,
            )
            session.add(audit)
            session.commit()
            return token, audit.id
    finally:
        engine.dispose()


class Connection:
    """A minimal HTTP/1.1 keep-alive client for GETs on loopback: a poller's own connection,
    as a browser's (httpx's pool costs the client more than the server at 200 connections)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, etag: str | None) -> tuple[int, dict[str, str]]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {self.token}"]
        lines += [f"If-None-Match: {etag}"] if etag else []
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            await self.close()
        return status, headers

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def poller(
    port: int, token: str, path: str, level: Level, interval: float, until: float
) -> None:
    connection = Connection(port, token)
    await asyncio.sleep(random.uniform(0, interval))
    etag: str | None = None
    try:
        while (start := time.perf_counter()) < until:
            try:
                status, headers = await asyncio.wait_for(
                    connection.get(path, etag), REQUEST_TIMEOUT
                )
            except TimeoutError:
                level.error("timeout")
                await connection.close()
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                level.error(type(exc).__name__)
                await connection.close()
            else:
                level.latencies.append(time.perf_counter() - start)
                level.statuses[status] = level.statuses.get(status, 0) + 1
                if status not in (200, 304):
                    level.error(f"HTTP {status}")
                etag = headers.get("etag", etag)
            await asyncio.sleep(max(0.0, start + interval - time.perf_counter()))
    finally:
        await connection.close()


async def run_level(
    url: str, token: str, audit_id: str, clients: int, seconds: float, interval: float
) -> Level:
    level = Level(clients)
    until = time.perf_counter() + seconds
    path = f"/api/v1/audits/{audit_id}"
    port = int(url.rsplit(":", 1)[1])
    await asyncio.gather(
        *(poller(port, token, path, level, interval, until) for _ in range(clients))
    )
    return level


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"recon-audit serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("recon-audit serve did not start")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the service (SIGKILL after 30 s), then every process it started must be gone."""
    tree = descendants(server.pid)
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    deadline = time.monotonic() + 10
    while (left := {pid for pid in tree if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if left:
        raise RuntimeError(f"recon-audit serve left processes behind: {sorted(left)} (killed)")


@contextmanager
def service(database_url: str | None = None) -> Iterator[tuple[str, str, int]]:
    """``recon-audit serve --no-worker`` on a free loopback port and a temporary data directory
    (``database_url``: an empty database, migrated first; default: the embedded SQLite), ended
    on exit. Yields ``(base_url, database_url, pid)``."""
    with tempfile.TemporaryDirectory(prefix="recon-audit-load-") as data_dir:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
        env["RECON_AUDIT_DATA_DIR"] = data_dir
        if database_url:
            env["DATABASE_URL"] = database_url
            migrate = [sys.executable, "-m", "app.cli", "migrate"]
            subprocess.run(migrate, env=env, cwd=ROOT, check=True, capture_output=True)
        with open(Path(data_dir) / "serve.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_ready(url, server)
                database = database_url or f"sqlite:///{Path(data_dir) / 'recon-audit.db'}"
                yield url, database, server.pid
            finally:
                _stop(server)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(level: Level, seconds: float, cpu: float) -> str:
    ms = [1000 * level.percentile(q) for q in (50, 95, 99)]
    answered = sum(level.statuses.values())
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(level.statuses.items()))
    errors = sum(level.errors.values())
    detail = f" ({', '.join(f'{k}: {v}' for k, v in level.errors.items())})" if errors else ""
    return (
        f"{level.clients:>7} {answered:>9} {answered / seconds:>7.0f} "
        f"{ms[0]:>8.1f} {ms[1]:>8.1f} {ms[2]:>8.1f} {1000 * cpu / max(answered, 1):>7.2f} "
        f"{errors:>6}{detail}   [{statuses}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,10,50,200", help="comma-separated levels")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level")
    parser.add_argument("--interval", type=float, default=1.0, help="s between a poller's GETs")
    parser.add_argument("--database-url", default=None, help="an empty database; default: SQLite")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    if args.seconds * len(levels) > 120:
        sys.exit("bounded to 2 minutes of polling: fewer levels or --seconds")
    with service(args.database_url) as (url, database_url, pid):
        token, audit_id = seed(database_url)
        print(f"GET {url}/api/v1/audits/{audit_id} on {args.database_url or 'SQLite'}:")
        print(f"each poller once every {args.interval:g} s, {args.seconds:g} s per level")
        print("(cpu ms: the service's CPU time per answered request)")
        print("clients  answered   req/s   p50 ms   p95 ms   p99 ms  cpu ms errors")
        for clients in levels:
            before = cpu_seconds(pid)
            level = asyncio.run(
                run_level(url, token, audit_id, clients, args.seconds, args.interval)
            )
            print(report(level, args.seconds, cpu_seconds(pid) - before), flush=True)


if __name__ == "__main__":
    main()
