"""End to end, with real processes: the API server, Celery workers, PostgreSQL + Redis (and the
embedded SQLite + filesystem broker), a reference network uploaded through REST, a ``quick``
audit, its results and PDF; and a worker killed during an audit."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import yaml

from app.processes import alive, descendants
from reconstruction.protocols import load_protocol
from tests.app.conftest import PG_ADMIN

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: per test run (see tests/app/conftest.py); the Celery queue too, so that concurrent runs
#: sharing the Redis database never take each other's tasks
E2E_DB = f"recon_audit_e2e_{os.getpid()}"
REDIS_URL = "redis://127.0.0.1:6379/15"
QUEUE = f"recon-audit-test-{os.getpid()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    env: dict[str, str]
    port: int
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """SIGKILL goes to the process's group (the machine dies); SIGTERM to the process alone,
        as ``docker stop`` through the image's init, or systemd with ``KillMode=mixed``, deliver
        it (a SIGTERM sent to a Celery worker's pool processes kills them under the main
        process's warm shutdown, which can then hang: celery/celery#2700). It and every process
        under it (a worker that ``serve`` started, its pool, their jailed runs) must be gone
        within seconds of its end."""
        process = self.processes.pop(name)
        tree = descendants(process.pid)
        if process.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        process.wait(timeout=60)
        deadline = time.monotonic() + 10
        while (left := {pid for pid in tree if alive(pid)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"{name} left processes running: {sorted(left)}"

    def stop(self) -> None:
        problems = []
        for name in list(self.processes):
            try:
                self.kill(name, signal.SIGTERM)
            except AssertionError as exc:
                problems.append(str(exc))
        assert not problems, problems

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the API did not come up; see {self.logs}")


def _service(tmp_path: Path, mode: str) -> Service:
    env = {
        **os.environ,
        "RECON_AUDIT_DATA_DIR": str(tmp_path / "data"),
        "RECON_AUDIT_COMPILE": "0",
        "RECON_AUDIT_BROKER_VISIBILITY_TIMEOUT": "5",
    }
    for key in ("DATABASE_URL", "BROKER_URL"):
        env.pop(key, None)
    if mode == "postgres+redis":
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {E2E_DB} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {E2E_DB}")
        redis.Redis.from_url(REDIS_URL).delete(QUEUE)
        env["RECON_AUDIT_QUEUE"] = QUEUE
        env["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{E2E_DB}"
        env["BROKER_URL"] = REDIS_URL
    logs = tmp_path / "logs"
    logs.mkdir()
    return Service(env, _free_port(), logs)


@pytest.fixture(params=["postgres+redis", "embedded"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    svc = _service(tmp_path, request.param)
    svc.cli("migrate")
    svc.start("api", "serve", "--no-worker", "--port", str(svc.port))
    svc.start("worker", "worker")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _upload(svc: Service, token: str, name: str = "automap-mri") -> str:
    folder = EXAMPLES / name
    with open(folder / "model.onnx", "rb") as model, open(folder / "manifest.json", "rb") as m:
        response = httpx.post(
            f"{svc.url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            files=[("model", ("model.onnx", model)), ("manifest", ("manifest.json", m))],
            timeout=300,
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait(svc: Service, token: str, audit_id: str, until: set[str], timeout: float = 400) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = httpx.get(
            f"{svc.url}/api/v1/audits/{audit_id}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        if audit["status"] in until:
            return audit
        time.sleep(0.5)
    raise AssertionError(f"audit {audit_id} did not reach {until}; see {svc.logs}")


def test_upload_audit_and_download(service: Service) -> None:
    token = service.cli("admin", "create-user", "alice", "--role", "submitter")
    headers = {"Authorization": f"Bearer {token}"}
    model_id = _upload(service, token)
    # quick, image by image: the audit fans out per test and image (its two images)
    protocol = load_protocol("quick").model_dump(mode="json")
    protocol["name"], protocol["images"]["per_unit"] = "quick-per-image", 1
    created = httpx.post(
        f"{service.url}/api/v1/audits",
        headers=headers,
        json={"model_id": model_id, "protocol": yaml.safe_dump(protocol)},
    )
    assert created.status_code == 202, created.text
    audit_id = created.json()["id"]
    seen = {_wait(service, token, audit_id, {"running", "succeeded"})["status"]}
    done = _wait(service, token, audit_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["percent"] == 100.0
    assert done["verdicts"]["sampling"] == "skipped"
    assert seen
    results = httpx.get(f"{service.url}/api/v1/audits/{audit_id}/results", headers=headers)
    assert results.json()["schema"] == "recon-audit/results/v1"
    assert results.json()["model"]["format"] == "onnx"
    assert [(s["tests"], s["unit"]) for s in results.json()["shards"]] == [
        ([test], unit) for test in ("perturbation", "structural", "sampling") for unit in (0, 1)
    ]
    row = results.json()["tests"]["perturbation"]["threat_models"]["image"]["results"][0]
    assert len(row["network"]["output_change"]) == 2  # both images' numbers, merged
    # the audit ran in the jail, as it saw itself from inside
    assert results.json()["environment"]["isolation"] == {
        "uid": 65534,
        "pid": 2,
        "no_new_privileges": True,
        "seccomp": "filter",
        "capabilities": False,
    }
    pdf = httpx.get(f"{service.url}/api/v1/audits/{audit_id}/report.pdf", headers=headers)
    assert pdf.status_code == 200
    assert pdf.content[:4] == b"%PDF"
    # the stored report is the certificate the worker signed with the service's CA
    verified = httpx.post(
        f"{service.url}/api/v1/verify", headers=headers, files=[("file", ("c.pdf", pdf.content))]
    ).json()
    assert verified["status"] == "valid", verified["reason"]
    assert verified["database"]["audit_id"] == audit_id
    assert [s["meaning"] for s in verified["signatures"]] == ["issued"]
    # the signed certificate carries the audit log's head at issue, and a checkpoint was written
    # then, and another at the finish, its certificate.signed and audit.succeeded included
    head = verified["certificate"]["event_chain"]
    assert head["events"] >= 4
    assert len(head["head"]) == 64
    checkpoints = sorted((Path(service.env["RECON_AUDIT_DATA_DIR"]) / "checkpoints").glob("*.json"))
    anchored = [json.loads(c.read_text()) for c in checkpoints]
    assert [a["head"] for a in anchored][:1] == [head["head"]]
    assert [a["events"] for a in anchored] == [head["events"], head["events"] + 2]
    figure = httpx.get(
        f"{service.url}/api/v1/audits/{audit_id}/figures/perturbation_image_curves.png",
        headers=headers,
    )
    assert figure.headers["content-type"] == "image/png"
    chain = json.loads(service.cli("admin", "verify-events"))
    assert chain["valid"] is True
    assert chain["anchors"] == 3  # the two checkpoints and the certificate


def test_a_running_audit_is_cancelled(service: Service) -> None:
    token = service.cli("admin", "create-user", "alice", "--role", "submitter")
    headers = {"Authorization": f"Bearer {token}"}
    model_id = _upload(service, token)
    # ``standard``: its perturbation search runs for minutes, so the cancel lands inside a
    # jailed run (``quick``'s can end before its next progress check)
    audit_id = httpx.post(
        f"{service.url}/api/v1/audits",
        headers=headers,
        json={"model_id": model_id, "protocol": "standard"},
    ).json()["id"]
    _wait(service, token, audit_id, {"running"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until a run reports progress
        audit = httpx.get(f"{service.url}/api/v1/audits/{audit_id}", headers=headers).json()
        if audit["progress"]["percent"] > 0:
            break
        time.sleep(0.2)
    cancelled = httpx.post(f"{service.url}/api/v1/audits/{audit_id}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # the worker's jailed runs stop at their next progress check: no jail left within seconds
    worker = service.processes["worker"].pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        "bwrap" in _command(pid) for pid in descendants(worker)
    ):
        time.sleep(0.5)
    assert not any("bwrap" in _command(pid) for pid in descendants(worker))
    audit = httpx.get(f"{service.url}/api/v1/audits/{audit_id}", headers=headers).json()
    assert audit["status"] == "cancelled"
    assert (
        httpx.get(f"{service.url}/api/v1/audits/{audit_id}/results", headers=headers).status_code
        == 409
    )
    again = httpx.post(f"{service.url}/api/v1/audits/{audit_id}/cancel", headers=headers)
    assert again.status_code == 409
    chain = json.loads(service.cli("admin", "verify-events"))
    assert chain["valid"] is True


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _query(svc: Service, query: str, value: str) -> object:
    """One value from the service's database (``{}``: the placeholder for ``value``)."""
    if "DATABASE_URL" in svc.env:
        with psycopg.connect(svc.env["DATABASE_URL"].replace("+psycopg", "")) as connection:
            row = connection.execute(query.format("%s"), (value,)).fetchone()
    else:
        with sqlite3.connect(Path(svc.env["RECON_AUDIT_DATA_DIR"]) / "recon-audit.db") as db:
            row = db.execute(query.format("?"), (value,)).fetchone()
    return None if row is None else row[0]


def _search_running(svc: Service, audit_id: str) -> bool:
    """Whether the audit's perturbation shard is running (held by a worker), so that killing
    the worker interrupts it (a short shard may finish first and report progress alone)."""
    query = (
        "SELECT count(*) FROM audit_shards WHERE audit_id = {} AND status = 'running' "
        "AND substr(test, 1, 12) = 'perturbation'"
    )
    return bool(_query(svc, query, audit_id))


def _run_counts(svc: Service, audit_id: str) -> tuple[int, int, int]:
    """The audit's stored results, its shards' most attempts, and its ``audit.requeued``
    events, read from the service's database."""
    queries = [
        ("SELECT count(*) FROM audit_results WHERE audit_id = {}", audit_id),
        ("SELECT max(attempts) FROM audit_shards WHERE audit_id = {}", audit_id),
        (
            "SELECT count(*) FROM audit_events WHERE action = 'audit.requeued' AND subject = {}",
            f"audit:{audit_id}",
        ),
    ]
    counts = [c for c in (_query(svc, q, v) for q, v in queries) if isinstance(c, int)]
    assert len(counts) == 3
    return counts[0], counts[1], counts[2]


@pytest.mark.parametrize("mode", ["postgres+redis", "embedded"])
def test_a_killed_worker_does_not_lose_or_duplicate_an_audit(tmp_path: Path, mode: str) -> None:
    """Redis delivers the lost task again after its visibility timeout; the embedded broker
    lost it with the worker, and the next worker's sweep sends it again. Either way the
    audit finishes once, its lost shard run twice. The audit is ``quick`` without the
    more-samples test (the reference network's fixed size skips it): two shards, the first of
    which (the perturbation search) is killed while it computes."""
    protocol = load_protocol("quick").model_dump(mode="json")
    protocol["name"], protocol["sampling"] = "quick-two-tests", None
    svc = _service(tmp_path, mode)
    svc.cli("migrate")
    svc.start("api", "serve", "--no-worker", "--port", str(svc.port))
    svc.start("worker", "worker")
    try:
        svc.wait_ready()
        token = svc.cli("admin", "create-user", "alice", "--role", "submitter")
        model_id = _upload(svc, token)
        audit_id = httpx.post(
            f"{svc.url}/api/v1/audits",
            headers={"Authorization": f"Bearer {token}"},
            json={"model_id": model_id, "protocol": yaml.safe_dump(protocol)},
        ).json()["id"]
        _wait(svc, token, audit_id, {"running"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the search's shard computes and reports
            audit = httpx.get(
                f"{svc.url}/api/v1/audits/{audit_id}",
                headers={"Authorization": f"Bearer {token}"},
            ).json()
            if audit["progress"]["percent"] > 0 and _search_running(svc, audit_id):
                break
            time.sleep(0.2)
        svc.kill("worker")  # the machine dies mid-audit
        svc.start("worker-2", "worker")
        done = _wait(svc, token, audit_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done["error"]
        rows, retried, requeued = _run_counts(svc, audit_id)
        assert rows == 1
        # the shard the dead worker held ran again (the audit fans out per test), once more
        assert retried == 2
        assert requeued <= 1  # Redis may deliver it again before any sweep
        assert '"valid": true' in svc.cli("admin", "verify-events")
    finally:
        svc.stop()


def test_a_fastmri_file_audits_through_the_api(tmp_path: Path) -> None:
    """Measured k-space end to end: a fastMRI-style file uploaded as an image set (two slices),
    audited in the jail with the AUTOMAP reference; truth and measurements from the file."""
    from tests.reconstruction.measured_files import write_fastmri

    svc = _service(tmp_path, "embedded")
    svc.cli("migrate")
    svc.start("api", "serve", "--no-worker", "--port", str(svc.port))
    svc.start("worker", "worker")
    try:
        svc.wait_ready()
        token = svc.cli("admin", "create-user", "alice", "--role", "submitter")
        headers = {"Authorization": f"Bearer {token}"}
        model_id = _upload(svc, token)
        data = write_fastmri(tmp_path / "knee.h5", size=32, oversample=2, coils=None, slices=3)
        uploaded = httpx.post(
            f"{svc.url}/api/v1/images",
            headers=headers,
            data={"name": "knee", "slices": "0:2"},
            files=[("files", ("knee.h5", data.read_bytes()))],
        )
        assert uploaded.status_code == 201, uploaded.text
        created = httpx.post(
            f"{svc.url}/api/v1/audits",
            headers=headers,
            json={"model_id": model_id, "image_set": "knee"},
        )
        assert created.status_code == 202, created.text
        audit_id = created.json()["id"]
        done = _wait(svc, token, audit_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done["error"]
        results = httpx.get(f"{svc.url}/api/v1/audits/{audit_id}/results", headers=headers).json()
        assert results["measurements"] == "measured"
        assert results["metric_convention"]["name"] == "recon-audit"
        assert [image["source"].rsplit("#", 1)[1] for image in results["images"]] == [
            "slice=0",
            "slice=1",
        ]
        pdf = httpx.get(f"{svc.url}/api/v1/audits/{audit_id}/report.pdf", headers=headers)
        assert pdf.content[:4] == b"%PDF"
    finally:
        svc.stop()
