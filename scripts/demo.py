"""The service demo (``make demo``): start the embedded service, create a user, upload a
reference network through the REST API, run a ``quick`` audit with progress, download the PDF
report, and shut down cleanly.

    python scripts/demo.py [--data-dir out/demo-service] [--network unet-mri] [--port 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.processes import alive, descendants

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"recon-audit {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "out" / "demo-service")
    parser.add_argument("--network", default="unet-mri")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RECON_AUDIT_DATA_DIR": str(args.data_dir.resolve())}
    for key in ("DATABASE_URL", "BROKER_URL"):
        env.pop(key, None)  # the embedded default: SQLite and a serverless broker

    log = open(args.data_dir / "service.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        print(f"starting the embedded service at {url} (log: {args.data_dir / 'service.log'})")
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the service did not start; see {args.data_dir / 'service.log'}")
            time.sleep(0.5)

        token = cli(env, "admin", "create-user", "demo", "--role", "submitter")
        headers = {"Authorization": f"Bearer {token}"}
        print("created user 'demo' (submitter)")

        folder = ROOT / "examples" / args.network
        files = [("model", ("model.onnx", (folder / "model.onnx").read_bytes()))]
        files.append(("manifest", ("manifest.json", (folder / "manifest.json").read_bytes())))
        if (folder / "mask.npy").exists():
            files.append(("files", ("mask.npy", (folder / "mask.npy").read_bytes())))
        uploaded = httpx.post(f"{url}/api/v1/models", headers=headers, files=files, timeout=600)
        uploaded.raise_for_status()
        model = uploaded.json()
        print(
            f"uploaded {model['name']}: {model['format']}, {model['gradient_access']}, "
            f"sha256 {model['sha256'][:16]}..."
        )

        created = httpx.post(
            f"{url}/api/v1/audits", headers=headers, json={"model_id": model["id"]}, timeout=30
        )
        created.raise_for_status()
        audit_id = created.json()["id"]
        print(f"audit {audit_id} queued (protocol quick)")
        deadline = time.monotonic() + args.timeout
        shown = ""
        while True:
            audit = httpx.get(f"{url}/api/v1/audits/{audit_id}", headers=headers).json()
            line = f"  {audit['status']:<9} {audit['progress']['stage'] or '':<13} " + (
                f"{audit['progress']['percent']:5.1f} %"
            )
            if line != shown:
                print(line, flush=True)
                shown = line
            if audit["status"] in ("succeeded", "failed"):
                break
            if time.monotonic() > deadline:
                sys.exit("the audit did not finish in time")
            time.sleep(1)
        if audit["status"] == "failed":
            sys.exit(f"the audit failed: {audit['error']}")
        for test, verdict in audit["verdicts"].items():
            print(f"  {test:<13} {verdict}")

        report = httpx.get(f"{url}/api/v1/audits/{audit_id}/report.pdf", headers=headers)
        report.raise_for_status()
        target = ROOT / "out" / "demo" / "report.pdf"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(report.content)
        print(f"report: {target} ({len(report.content)} bytes)")
        print(f"results: {url}/api/v1/audits/{audit_id}/results  (API docs: {url}/docs)")
        print(
            f"dashboard: {url}/ui/audits/{audit_id} (sign in with the demo token: {token}); "
            "run `RECON_AUDIT_DATA_DIR="
            f"{args.data_dir} recon-audit serve` to browse it again"
        )
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the service, which stops its worker; then every process it had started must
    be gone (any left is killed, and said)."""
    tree = descendants(server.pid)
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    deadline = time.monotonic() + 10
    while (left := {pid for pid in tree if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if left:
        sys.exit(f"the service left processes running (killed now): {sorted(left)}")
    print("service stopped")


if __name__ == "__main__":
    main()
