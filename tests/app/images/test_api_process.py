"""The API process itself, as ``recon-audit serve --no-worker`` runs it: after an upload of every
kind of test image (PNG, TIFF, NPY, DICOM and a DICOM series, NIfTI and gzipped NIfTI, fastMRI
HDF5), of a model, and of decompression and slice bombs, none of the libraries that parse
uploaded data or run networks is loaded in it (their shared objects are not mapped: torch, h5py
and HDF5, Pillow, onnx), and its peak memory stays below 400 MB. Every byte was parsed in the
jail."""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.reconstruction import hostile_files as hostile
from tests.reconstruction.measured_files import write_dicom_series, write_fastmri
from tests.worker.test_tasks import Service, _service, _upload

#: shared objects that show a parser of uploaded data, or a network runtime, in the process
PARSERS = {
    "torch": re.compile(r"libtorch|/torch/lib/"),
    "h5py": re.compile(r"/h5py/|libhdf5"),
    "Pillow": re.compile(r"/PIL/|pillow\.libs"),
    "onnx": re.compile(r"/onnx/|onnxruntime"),
}
#: the API's peak resident memory after all of it
MAX_RSS_BYTES = 400 * 2**20


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Service]:
    svc = _service(tmp_path, "embedded")
    svc.cli("migrate")
    svc.start("api", "serve", "--no-worker", "--port", str(svc.port))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _files(tmp_path: Path) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(png, format="PNG")
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, rng.random((32, 32)).astype(np.float32))
    npy = io.BytesIO()
    np.save(npy, rng.random((32, 32, 3)))
    nifti = nibabel.Nifti1Image(rng.random((32, 32, 4)).astype(np.float32), np.eye(4))
    nii = nifti.to_bytes()
    write_dicom_series(tmp_path / "series", [2, 0, 1])
    series = tmp_path / "series"
    out = [("a.png", png.getvalue()), ("b.tif", tiff.getvalue()), ("c.npy", npy.getvalue())]
    out += [("d.nii", nii), ("e.nii.gz", gzip.compress(nii))]
    out += [(f"s{i}.dcm", p.read_bytes()) for i, p in enumerate(sorted(series.iterdir()))]
    return [*out, ("knee.h5", write_fastmri(tmp_path / "knee.h5").read_bytes())]


def _mapped(pid: int) -> dict[str, bool]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name: bool(pattern.search(maps)) for name, pattern in PARSERS.items()}


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1)) * 1024


def test_the_api_parses_no_upload_itself(api: Service, tmp_path: Path) -> None:
    token = api.cli("admin", "create-user", "alice", "--role", "submitter")
    pid = api.processes["api"].pid
    response = httpx.post(
        f"{api.url}/api/v1/images",
        headers={"Authorization": f"Bearer {token}"},
        data={"name": "every-kind", "slices": "all"},
        files=[("files", item) for item in _files(tmp_path)],
        timeout=300,
    )
    assert response.status_code == 201, response.text
    formats = {entry["format"] for entry in response.json()["images"]}
    assert formats == {"PNG", "TIFF", "NPY", "NIfTI", "DICOM", "fastMRI HDF5"}, formats
    assert any("series" in entry for entry in response.json()["images"])
    _upload(api, token)  # a model too: its check runs in the jail
    bombs = [
        hostile.build_chunk_bomb(tmp_path / "chunk.h5"),  # 1 GiB of zeros in one gzip chunk
        hostile.build_many_slices(tmp_path / "slices.h5"),
        hostile.build_png_bomb(tmp_path / "bomb.png", 8192, 8192),
        hostile.build_tiff_bomb(tmp_path / "bomb.tif", (8192, 8192)),
    ]
    for i, bomb in enumerate(bombs):
        refused = httpx.post(
            f"{api.url}/api/v1/images",
            headers={"Authorization": f"Bearer {token}"},
            data={"name": f"bomb-{i}", "slices": "all"},
            files=[("files", (bomb.name, bomb.read_bytes()))],
            timeout=300,
        )
        assert refused.status_code in (413, 422), refused.text
    assert _mapped(pid) == dict.fromkeys(PARSERS, False)
    assert _peak_rss(pid) < MAX_RSS_BYTES
