"""Malformed uploads, generated (hypothesis, derandomized, bounded): valid seed files of every
kind the upload routes take (PNG, TIFF, NPY, DICOM, NIfTI, gzipped NIfTI, fastMRI HDF5; a
torch.export ``.pt2`` and a manifest for the models route), truncated, with bytes flipped,
spliced or inserted. Whatever comes in, the answer is a 4xx or a 2xx (never a server error),
a 4xx carries the service's ``{detail, field}`` body, no message names a path of the server
(its store, its data directory, the jail's folder), and a refused upload stores nothing."""

from __future__ import annotations

import gzip
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import hypothesis
import nibabel
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from app.settings import get_settings
from tests.app.conftest import bearer
from tests.reconstruction.measured_files import write_fastmri
from tests.reconstruction.models.conftest import Tiny

#: generated uploads per route (each image upload is one jailed read, about 0.3 s)
IMAGE_EXAMPLES = 40
MODEL_EXAMPLES = 25
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@cache
def _image_seeds(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(png, format="PNG")
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, rng.random((16, 16)).astype(np.float32))
    npy = io.BytesIO()
    np.save(npy, rng.random((16, 16)))
    nii = nibabel.Nifti1Image(rng.random((16, 16, 3)).astype(np.float32), np.eye(4)).to_bytes()
    dicom = Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()
    assert pydicom.dcmread(io.BytesIO(dicom)).Rows == 64
    h5 = write_fastmri(folder / "seed.h5", size=16, coils=2, slices=2).read_bytes()
    return {
        "a.png": png.getvalue(),
        "a.tif": tiff.getvalue(),
        "a.npy": npy.getvalue(),
        "a.nii": nii,
        "a.nii.gz": gzip.compress(nii),
        "a.dcm": dicom,
        "a.h5": h5,
    }


@cache
def _model_seeds(folder: Path) -> dict[str, bytes]:
    pt2 = folder / "model.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.rand(1, 2, 8, 8),)), str(pt2))
    return {
        "model.pt2": pt2.read_bytes(),
        "manifest.json": (EXAMPLES / "automap-mri" / "manifest.json").read_bytes(),
    }


@st.composite
def _mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` after one to three edits: a cut, flipped bytes, a spliced or inserted run."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["truncate", "flip", "insert", "overwrite"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "truncate":
            del data[at:]
        elif edit == "flip":
            for i in range(at, min(at + draw(st.integers(1, 16)), len(data))):
                data[i] ^= draw(st.integers(1, 255))
        else:
            run = draw(st.binary(min_size=1, max_size=64))
            data[at : at + (len(run) if edit == "overwrite" else 0)] = run
    return bytes(data)


def _server_paths() -> list[str]:
    settings = get_settings()
    return [str(settings.data_dir.resolve()), str(settings.store_dir), "/job/", "/tmp/"]


def _check(response: Any, stored_before: Any, stored_after: Any) -> None:
    status, body = response.status_code, response.json()
    assert status < 500, body
    if status >= 400:
        assert set(body) == {"detail", "field"}, body
        assert isinstance(body["detail"], str)
        assert body["detail"]
        for path in _server_paths():
            assert path not in body["detail"], body
        assert stored_after == stored_before  # a refused upload stores nothing


def test_malformed_images_get_a_clear_4xx(
    client: TestClient, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    seeds = _image_seeds(tmp_path_factory.mktemp("seeds"))
    token = tokens["alice"]
    counter = iter(range(10**6))

    @hypothesis.settings(
        max_examples=IMAGE_EXAMPLES, derandomize=True, deadline=None, database=None
    )
    @hypothesis.given(
        st.sampled_from(sorted(seeds)).flatmap(lambda n: st.tuples(st.just(n), _mutated(seeds[n])))
    )
    def upload(item: tuple[str, bytes]) -> None:
        name, data = item
        before = client.get("/api/v1/images", headers=bearer(token)).json()
        response = client.post(
            "/api/v1/images",
            headers=bearer(token),
            data={"name": f"fuzz-{next(counter)}", "slices": "all"},
            files=[("files", (name, data))],
        )
        _check(response, before, client.get("/api/v1/images", headers=bearer(token)).json())

    upload()


def test_malformed_models_and_manifests_get_a_clear_4xx(
    client: TestClient, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    seeds = _model_seeds(tmp_path_factory.mktemp("seeds"))
    token = tokens["bob"]
    manifest = json.loads(seeds["manifest.json"])  # made to fit the seed network (8 x 8)
    manifest.update(
        image_size=[8, 8],
        input={"domain": "image", "layout": "complex2"},
        output={"layout": "complex2"},
    )
    fitting = json.dumps(manifest).encode()

    @hypothesis.settings(
        max_examples=MODEL_EXAMPLES, derandomize=True, deadline=None, database=None
    )
    @hypothesis.given(st.booleans(), _mutated(seeds["model.pt2"]), _mutated(fitting))
    def upload(break_model: bool, model: bytes, broken_manifest: bytes) -> None:
        before = client.get("/api/v1/models", headers=bearer(token)).json()
        response = client.post(
            "/api/v1/models",
            headers=bearer(token),
            files=[
                ("model", ("model.pt2", model if break_model else seeds["model.pt2"])),
                ("manifest", ("manifest.json", fitting if break_model else broken_manifest)),
            ],
        )
        _check(response, before, client.get("/api/v1/models", headers=bearer(token)).json())

    upload()
