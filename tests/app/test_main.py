"""The app's contract: one error body for every error (validation, unknown routes, methods),
OPTIONS and 405 with the path's whole Allow, and 413 for oversize bodies, chunked or not, with
the same limit in every message."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db import sessions
from app.settings import get_settings
from tests.app.conftest import _restore, _use_settings, bearer
from tests.app.networks.test_router import MANIFEST

ROOT = Path(__file__).resolve().parents[2]


def test_every_error_has_one_body(client: TestClient, tokens: dict[str, str]) -> None:
    missing = client.get("/api/v1/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found", "field": None})
    anonymous = client.get("/api/v1/audits")
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "detail": "missing bearer token (Authorization: Bearer <token>)",
        "field": None,
    }
    bad_json = client.post(
        "/api/v1/audits",
        headers={**bearer(tokens["alice"]), "Content-Type": "application/json"},
        content=b"{",
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["field"] == "body"
    empty = client.post("/api/v1/audits", headers=bearer(tokens["alice"]), json={})
    assert empty.json() == {"detail": "model_id: Field required", "field": "model_id"}


def test_options_and_other_methods_get_the_whole_allow(client: TestClient) -> None:
    options = client.options("/api/v1/audits")
    assert options.status_code == 204
    assert options.headers["Allow"] == "GET, OPTIONS, POST"
    delete = client.delete("/api/v1/audits")
    assert delete.status_code == 405
    assert delete.headers["Allow"] == "GET, OPTIONS, POST"
    assert delete.json() == {"detail": "Method Not Allowed", "field": None}
    assert client.options("/api/v1/audits/x/approve").headers["Allow"] == "OPTIONS, POST"


@pytest.fixture
def small_client(db: Session) -> Iterator[TestClient]:
    """The app with a 1000-byte upload limit."""
    from app.main import create_app

    previous = _use_settings(RECON_AUDIT_MAX_UPLOAD_BYTES="1000")
    try:
        app = create_app()
        app.dependency_overrides[sessions] = lambda: db
        with TestClient(app) as test_client:
            yield test_client
    finally:
        _restore(previous)
        get_settings.cache_clear()


def _multipart(model: bytes) -> tuple[bytes, str]:
    boundary = "recon-audit-boundary"
    parts = [
        (b'name="model"; filename="model.onnx"', model),
        (b'name="manifest"; filename="manifest.json"', json.dumps(MANIFEST).encode()),
    ]
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary.encode(), d, v)
        for d, v in parts
    )
    return body + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("size", [1500, 3 * 2**20])
@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_bodies_are_413_quoting_the_upload_limit(
    small_client: TestClient, tokens: dict[str, str], size: int, chunked: bool
) -> None:
    """Above the limit but within the multipart slack the upload's own check answers; far above
    it the body limit does, while the body streams in, chunked or with a Content-Length."""
    body, content_type = _multipart(bytes(size))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = small_client.post(
        "/api/v1/models",
        headers={**bearer(tokens["alice"]), "Content-Type": content_type},
        content=chunks() if chunked else body,
    )
    assert response.status_code == 413, response.text
    limit = "the upload exceeds the limit of 1000 bytes"
    assert response.json() == {"detail": limit, "field": None}


def test_values_the_database_refuses_are_422(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.get("/api/v1/audits/a%00b", headers=bearer(tokens["alice"]))
    assert response.status_code == 422
    assert response.json() == {
        "detail": "an input holds a value the database cannot take (e.g. NUL)",
        "field": None,
    }


def test_the_web_process_loads_no_torch() -> None:
    """A fresh interpreter builds the app and runs what a request runs in the web process (an
    upload's format and manifest checks, a protocol's validation): the network itself is
    loaded only in the sandbox, so torch and onnx are never imported here."""
    probe = (
        "import json, sys\n"
        "from app.main import create_app\n"
        "from reconstruction.models import detect_format, load_manifest\n"
        "from reconstruction.protocols import load_protocol\n"
        "create_app()\n"
        "checked = [detect_format('examples/unet-mri/model.onnx'),\n"
        "           load_manifest('examples/unet-mri/manifest.json').name,\n"
        "           load_protocol('standard').name]\n"
        "print(json.dumps([m for m in ('torch', 'onnx') if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(done.stdout) == []
