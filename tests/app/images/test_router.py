from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.conftest import bearer


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def test_image_sets(client: TestClient, tokens: dict[str, str]) -> None:
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "scans"},
        files=[("files", ("a.png", _png())), ("files", ("b.png", _png()))],
    )
    assert response.status_code == 201, response.text
    images = response.json()["images"]
    assert [i["name"] for i in images] == ["a.png", "b.png"]
    assert images[0]["shape"] == [40, 40]
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert names == ["builtin", "scans"]
    again = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "scans"},
        files=[("files", ("a.png", _png()))],
    )
    assert again.status_code == 409


def test_bad_images_are_refused(client: TestClient, tokens: dict[str, str]) -> None:
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "bad"},
        files=[("files", ("x.npy", pickled.getvalue()))],
    )
    assert response.status_code == 422
    assert response.json()["field"] == "files"
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert names == ["builtin"]
