"""Model uploads through the API: validation in the sandbox, deduplication, visibility, and
every bad input refused with nothing stored."""

from __future__ import annotations

import io
import json
from typing import Any

import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.deps import get_store
from app.orm import AuditEvent, Network
from app.settings import Settings, get_settings
from tests.app.conftest import bearer
from tests.reconstruction.models.conftest import conv_model

MANIFEST = {
    "name": "conv-net",
    "modality": "mri",
    "image_size": [32, 32],
    "input": {"domain": "image", "layout": "complex2"},
    "output": {"layout": "complex2"},
    "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.3, "seed": 0}},
}


def _onnx_bytes(**kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    onnx.save_model(conv_model(**kwargs), buffer)
    return buffer.getvalue()


def _upload(
    client: TestClient,
    token: str,
    model: bytes,
    manifest: dict[str, Any] | bytes = MANIFEST,
    model_name: str = "model.onnx",
    files: list[tuple[str, bytes]] | None = None,
) -> Any:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    parts: list[tuple[str, tuple[str, bytes]]] = [
        ("model", (model_name, model)),
        ("manifest", ("manifest.json", body)),
    ]
    parts += [("files", f) for f in files or []]
    return client.post("/api/v1/models", headers=bearer(token), files=parts)


def _stored(db: Session) -> tuple[int, int, int]:
    objects = sum(1 for p in get_store().objects.rglob("*") if p.is_file())
    networks = db.scalar(select(func.count()).select_from(Network)) or 0
    events = db.scalar(select(func.count()).select_from(AuditEvent)) or 0
    return objects, networks, events


def test_upload_validates_and_deduplicates(client: TestClient, tokens: dict[str, str]) -> None:
    model = _onnx_bytes()
    first = _upload(client, tokens["alice"], model)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["format"] == "onnx"
    assert body["gradient_access"] == "white-box"
    assert len(body["sha256"]) == 64
    assert body["summary"]["parity_error"] < 1e-4
    again = _upload(client, tokens["alice"], model)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    # another submitter does not see it; an auditor does
    assert (
        client.get(f"/api/v1/models/{body['id']}", headers=bearer(tokens["bob"])).status_code == 404
    )
    assert (
        client.get(f"/api/v1/models/{body['id']}", headers=bearer(tokens["ada"])).status_code == 200
    )
    assert [
        m["id"] for m in client.get("/api/v1/models", headers=bearer(tokens["bob"])).json()
    ] == []


def test_mask_file_travels_with_the_manifest(client: TestClient, tokens: dict[str, str]) -> None:
    import numpy as np

    from reconstruction.sampling import variable_density

    buffer = io.BytesIO()
    np.save(buffer, variable_density((32, 32), 0.25, 1))
    manifest = {**MANIFEST, "sampling": {"mask": "mask.npy", "ratio": 0.25}}
    response = _upload(
        client, tokens["alice"], _onnx_bytes(), manifest, files=[("mask.npy", buffer.getvalue())]
    )
    assert response.status_code == 201, response.text
    assert [f["name"] for f in response.json()["files"]] == ["manifest.json", "mask.npy"]


def _pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("case", "status", "message", "field"),
    [
        ("pickle", 415, "pickled PyTorch file", "model"),
        ("text", 415, "not a model format we accept", "model"),
        ("manifest-field", 422, "Input should be", "manifest.modality"),
        ("manifest-json", 422, "not valid JSON/YAML", "manifest"),
        ("mismatch", 422, "manifest field 'image_size'", "manifest.image_size"),
        ("nan", 422, "non-finite values", "model"),
        ("bad-name", 422, "not a plain file name", "model"),
        ("missing-mask", 422, "not found beside the manifest", "manifest.sampling.mask"),
        ("extra-input", 422, "the ONNX model takes 1 inputs (x)", "manifest.input.extra"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    case: str,
    status: int,
    message: str,
    field: str,
) -> None:
    from onnx import helper

    model, manifest, name = _onnx_bytes(), json.dumps(MANIFEST).encode(), "model.onnx"
    if case == "pickle":
        model, name = _pickle(), "model.pt"
    elif case == "text":
        model = b"hello"
    elif case == "manifest-field":
        manifest = json.dumps({**MANIFEST, "modality": "pet"}).encode()
    elif case == "manifest-json":
        manifest = b"{not json"
    elif case == "mismatch":
        model = _onnx_bytes(spatial=64)
    elif case == "nan":
        tail = [
            helper.make_node("Abs", ["y"], ["a"]),
            helper.make_node("Neg", ["a"], ["n"]),
            helper.make_node("Log", ["n"], ["z"]),
        ]
        model = _onnx_bytes(extra_nodes=tail, output="z")
    elif case == "bad-name":
        name = ".model.onnx"
    elif case == "missing-mask":
        manifest = json.dumps({**MANIFEST, "sampling": {"mask": "mask.npy"}}).encode()
    elif case == "extra-input":
        mask = {"role": "mask", "shape": ["H", "W"], "dtype": "float32"}
        inputs = {**MANIFEST["input"], "extra": [mask]}  # type: ignore[dict-item]
        manifest = json.dumps({**MANIFEST, "input": inputs}).encode()
    before = _stored(db)
    response = _upload(client, tokens["alice"], model, manifest, model_name=name)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert response.json().get("field") == field
    assert _stored(db) == before


def test_oversize_upload_is_413(client: TestClient, db: Session, tokens: dict[str, str]) -> None:
    small = Settings(max_upload_bytes=400)
    client.app.dependency_overrides[get_settings] = lambda: small  # type: ignore[attr-defined]
    before = _stored(db)
    response = _upload(client, tokens["alice"], _onnx_bytes())
    assert response.status_code == 413
    assert "exceeds the limit of 400 bytes" in response.json()["detail"]
    assert _stored(db) == before


def test_auth_and_roles(client: TestClient, tokens: dict[str, str]) -> None:
    assert _upload(client, "ra_nope", _onnx_bytes()).status_code == 401
    response = client.post("/api/v1/models")
    assert response.status_code == 401
    assert "missing bearer token" in response.json()["detail"]
    forbidden = _upload(client, tokens["ada"], _onnx_bytes())
    assert forbidden.status_code == 403
    assert "submitter" in forbidden.json()["detail"]


def test_same_bytes_with_another_manifest_are_refused_not_the_old_record(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    model = _onnx_bytes()
    first = _upload(client, tokens["alice"], model)
    assert first.status_code == 201, first.text
    before = _stored(db)
    other = _upload(client, tokens["alice"], model, {**MANIFEST, "name": "conv-net-v2"})
    assert other.status_code == 409, other.text
    assert other.json()["field"] == "manifest"
    assert (
        f"already as model {first.json()['id']}, with another manifest" in (other.json()["detail"])
    )
    assert _stored(db) == before
    same = _upload(client, tokens["alice"], model)
    assert same.status_code == 200
    assert same.json()["id"] == first.json()["id"]
