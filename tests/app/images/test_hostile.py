"""Hostile image uploads through the API, as a submitter would try them: HDF5 ``kspace`` stored
in (or linked to) the service's own files (a key beside the store, the environment, /etc/shadow,
a missing path), the one-bit oracle of a float type read from such a file, virtual datasets,
slice and chunk bombs, PNG/TIFF/NIfTI/DICOM bombs, an empty k-space. Each gets a 4xx with the
service's ``{detail, field}`` body, the same answer whatever the file it names holds or whether
it exists, no byte of the planted secret in it, and nothing stored."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import get_settings
from tests.app.conftest import bearer
from tests.reconstruction import hostile_files as hostile


@pytest.fixture
def secret() -> tuple[Path, bytes]:
    """A planted key file among the service's own (its data directory)."""
    value = secrets.token_hex(32).encode()
    path = get_settings().data_dir.resolve() / "planted.key"
    path.write_bytes(value)
    return path, value


def _post(
    client: TestClient, token: str, path: Path, slices: str | None = None
) -> tuple[int, dict[str, object]]:
    data = {"name": "hostile"} | ({} if slices is None else {"slices": slices})
    response = client.post(
        "/api/v1/images",
        headers=bearer(token),
        data=data,
        files=[("files", (path.name, path.read_bytes()))],
    )
    return response.status_code, response.json()


def _nothing_stored(client: TestClient, token: str) -> None:
    sets = client.get("/api/v1/images", headers=bearer(token)).json()
    assert [s["name"] for s in sets] == ["builtin"]


def test_kspace_stored_in_the_services_files_learns_nothing(
    client: TestClient, tokens: dict[str, str], tmp_path: Path, secret: tuple[Path, bytes]
) -> None:
    key, value = secret
    targets = [key, Path("/proc/self/environ"), Path("/etc/shadow"), tmp_path / "missing"]
    answers = []
    for i, target in enumerate(targets):
        for offset in (0, 7):  # the oracle's bisection: another byte of the same file
            upload = hostile.build_external_kspace(
                tmp_path / f"x{i}{offset}.h5", target, offset=offset
            )
            status, body = _post(client, tokens["alice"], upload)
            assert status == 422, body
            assert body["field"] == "files"
            assert value.decode() not in str(body)
            answers.append(str(body["detail"]).replace(upload.name, "FILE"))
    assert len(set(answers)) == 1, answers  # existing or missing, any byte: the same answer
    assert "external storage" in answers[0]
    _nothing_stored(client, tokens["alice"])


@pytest.mark.parametrize(
    ("build", "slices", "words"),
    [
        (lambda p, t: hostile.build_virtual_kspace(p, t), None, "virtual"),
        (lambda p, t: hostile.build_linked_kspace(p, "external", t), None, "link"),
        (lambda p, _: hostile.build_custom_float(p), None, "float"),
        (lambda p, _: hostile.build_filtered_kspace(p), None, "filter"),
        (lambda p, _: hostile.build_chunk_bomb(p, write=False), None, "chunk"),
        (lambda p, _: hostile.build_many_slices(p), "all", "slices"),
        (lambda p, _: hostile.build_empty_kspace(p), None, "kspace"),
    ],
    ids=["virtual", "external-link", "custom-float", "filter", "chunk-bomb", "slices", "empty"],
)
def test_hostile_hdf5_is_refused_before_any_read(
    client: TestClient,
    tokens: dict[str, str],
    tmp_path: Path,
    secret: tuple[Path, bytes],
    build: Callable[[Path, Path], Path],
    slices: str | None,
    words: str,
) -> None:
    key, value = secret
    status, body = _post(client, tokens["alice"], build(tmp_path / "x.h5", key), slices)
    assert status == 422, body
    assert body["field"] in ("files", "slices")
    assert words in str(body["detail"]).lower(), body
    assert value.decode() not in str(body)
    assert "/job" not in str(body)
    assert str(tmp_path) not in str(body)
    _nothing_stored(client, tokens["alice"])


@pytest.mark.parametrize(
    ("name", "build", "slices"),
    [
        ("bomb.png", lambda p: hostile.build_png_bomb(p, 8192, 8192), None),
        ("palette.png", lambda p: hostile.build_png_bomb(p, 3400, 3400, "P"), None),
        ("bomb.tif", lambda p: hostile.build_tiff_bomb(p, (8192, 8192)), None),
        ("pages.tif", hostile.build_tiff_pages, "all"),
        ("slices.nii.gz", hostile.build_nifti_slices, "all"),
        ("frames.dcm", hostile.build_dicom_frames, "all"),
    ],
)
def test_image_bombs_are_refused(
    client: TestClient,
    tokens: dict[str, str],
    tmp_path: Path,
    name: str,
    build: Callable[[Path], Path],
    slices: str | None,
) -> None:
    status, body = _post(client, tokens["alice"], build(tmp_path / name), slices)
    assert status in (413, 422), body
    assert set(body) == {"detail", "field"}
    assert "/job" not in str(body)
    assert str(tmp_path) not in str(body)
    _nothing_stored(client, tokens["alice"])
