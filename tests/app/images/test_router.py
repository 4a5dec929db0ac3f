from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
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


def _fastmri(tmp_path: Path, **options: Any) -> bytes:
    from tests.reconstruction.measured_files import write_fastmri

    return write_fastmri(tmp_path / "f.h5", **options).read_bytes()


def test_a_fastmri_file_is_accepted_with_its_slices(
    client: TestClient, tokens: dict[str, str], tmp_path: Path
) -> None:
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "knees", "slices": "0:2"},
        files=[("files", ("knee.h5", _fastmri(tmp_path, slices=3)))],
    )
    assert response.status_code == 201, response.text
    (record,) = response.json()["images"]
    assert record["format"] == "fastMRI HDF5"
    assert record["images"] == 2
    assert record["measured"] is True
    assert record["slices"] == "0:2"
    assert record["shape"] == [64, 32]


@pytest.mark.parametrize(
    ("content", "slices", "field", "message"),
    [
        ("nokspace", None, "files", "no 'kspace' dataset"),
        ("fastmri", "5", "slices", "out of range for a volume of 3 slices"),
        ("fastmri", "a:b", "slices", "use 'all' or non-negative indices"),
        ("garbage", None, "files", "not a readable HDF5 file"),
    ],
)
def test_bad_hdf5_uploads_name_the_field_and_store_nothing(
    client: TestClient,
    tokens: dict[str, str],
    tmp_path: Path,
    content: str,
    slices: str | None,
    field: str,
    message: str,
) -> None:
    if content == "nokspace":
        with h5py.File(tmp_path / "n.h5", "w") as f:
            f.create_dataset("reconstruction_rss", data=np.zeros((2, 8, 8), np.float32))
        payload = (tmp_path / "n.h5").read_bytes()
    elif content == "garbage":
        payload = b"\x89HDF\r\n\x1a\nnot really"
    else:
        payload = _fastmri(tmp_path, slices=3)
    data = {"name": f"bad-{content}-{slices}"} | ({"slices": slices} if slices else {})
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data=data,
        files=[("files", ("scan.h5", payload))],
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert message in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"]
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert data["name"] not in names


def _dicom_files(tmp_path: Path, order: list[int]) -> list[tuple[str, tuple[str, bytes]]]:
    from tests.reconstruction.measured_files import write_dicom_series

    folder = tmp_path / "series"
    write_dicom_series(folder, order)
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def test_a_dicom_series_is_one_entry_of_the_set(
    client: TestClient, tokens: dict[str, str], tmp_path: Path
) -> None:
    """The .dcm files of one series are one volume (ordered by instance number, whatever the
    file names say); a PNG beside them stays an image of its own."""
    files = [("files", ("a.png", _png())), *_dicom_files(tmp_path, [2, 0, 3, 1])]
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "mr", "slices": "all"},
        files=files,
    )
    assert response.status_code == 201, response.text
    png, series = response.json()["images"]
    assert png["name"] == "a.png"
    assert series["name"] == "series-2"
    assert series["format"] == "DICOM"
    assert series["images"] == 4
    assert [m["name"] for m in series["series"]] == [f"file{i}.dcm" for i in range(4)]
    assert all(len(m["sha256"]) == 64 for m in series["series"])


def test_a_series_that_cannot_be_ordered_is_refused_and_nothing_stored(
    client: TestClient, tokens: dict[str, str], tmp_path: Path
) -> None:
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "unordered"},
        files=_dicom_files(tmp_path, [1, 1]),
    )
    assert response.status_code == 422
    assert response.json()["field"] == "files"
    assert "cannot be ordered" in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"]
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert names == ["builtin"]
