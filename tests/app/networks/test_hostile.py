"""Hostile uploads through the API, as a submitter would try them: TorchScript networks that
read the service's files (absolute and relative paths) and raise their bytes as the error, or
write outside their folder; a torch.export archive carrying a hostile pickle; an ONNX memory
bomb; model archives and images that expand 1000x. Each is refused or contained, no byte of the
planted secret appears in any response, nothing is stored, and the service stays healthy. Every
PyTorch-format validation runs in the jail."""

from __future__ import annotations

import gzip
import io
import os
import secrets
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from sqlalchemy.orm import Session

from app.certificates.pki import ensure_local_pki
from app.networks import service
from app.sandbox import SandboxResult, run_science
from app.settings import Settings, get_settings
from tests.app.conftest import bearer
from tests.app.networks.test_router import _stored, _upload
from tests.reconstruction.models.conftest import conv_model, hostile_pt2, pt2_with_config


class _Reads(torch.nn.Module):
    """Maps a file into a tensor and raises its bytes (or, ``shared``, overwrites it)."""

    def __init__(self, path: str, size: int, shared: bool = False) -> None:
        super().__init__()
        self.path, self.size, self.shared = path, size, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=self.shared, size=self.size, dtype=torch.uint8)
        if self.shared:
            data.fill_(65)
            return x
        values: list[int] = data.tolist()
        raise RuntimeError("LEAK:" + str(values))


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def _torchscript(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


@pytest.fixture
def secret() -> Iterator[tuple[Path, bytes]]:
    """A key-like file in the service's data directory, beside its database and pki/."""
    data_dir = get_settings().data_dir.resolve()
    body = f"-----BEGIN PRIVATE KEY-----\n{secrets.token_hex(16)}\n-----END PRIVATE KEY-----\n"
    path = data_dir / f"secret-{secrets.token_hex(4)}.key"
    path.write_text(body)
    yield path, body.encode()
    path.unlink()


@pytest.fixture
def jailed_runs(monkeypatch: pytest.MonkeyPatch) -> list[SandboxResult]:
    """Every jailed run of upload validation, as the service saw it."""
    runs: list[SandboxResult] = []

    def spy(*args: Any, **kwargs: Any) -> SandboxResult:
        result = run_science(*args, **kwargs)
        runs.append(result)
        return result

    monkeypatch.setattr(service, "run_science", spy)
    return runs


def _leaks(text: str, secret: bytes) -> bool:
    """Any recognisable piece of the secret in ``text``: its lines, its bytes as numbers."""
    lines = [line for line in secret.decode().splitlines() if line]
    as_numbers = ", ".join(str(b) for b in secret[:8])
    return any(line in text for line in lines) or as_numbers in text or "PRIVATE" in text


def _assert_jailed(run: SandboxResult) -> None:
    for kind in ("pid", "net", "mnt"):
        assert run.jail[f"{kind}-namespace"] != os.stat(f"/proc/self/ns/{kind}").st_ino


def test_a_pytorch_format_is_validated_in_the_jail(
    client: TestClient, tokens: dict[str, str], jailed_runs: list[SandboxResult]
) -> None:
    response = _upload(client, tokens["alice"], _torchscript(_Identity()), model_name="identity.ts")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "torchscript"
    assert len(jailed_runs) == 1
    _assert_jailed(jailed_runs[0])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_torch_export_archive_with_a_hostile_pickle_is_refused_in_the_jail(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    jailed_runs: list[SandboxResult],
    tmp_path: Path,
) -> None:
    """The web process recognises the archive without unpickling its members; the jail's
    load refuses the sample inputs' pickle before torch.export.load would reach it."""
    hostile, witness = hostile_pt2(tmp_path)
    before = _stored(db)
    response = _upload(client, tokens["alice"], hostile.read_bytes(), model_name="model.pt2")
    assert response.status_code == 422, response.text
    assert "is not plain tensor data" in response.json()["detail"]
    assert response.json()["field"] == "model"
    assert not witness.exists()
    assert _stored(db) == before
    assert len(jailed_runs) == 1
    _assert_jailed(jailed_runs[0])


@pytest.mark.parametrize("how", ["absolute", "relative", "signer-key", "etc-shadow"])
def test_a_network_that_reads_files_learns_nothing(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    secret: tuple[Path, bytes],
    jailed_runs: list[SandboxResult],
    how: str,
) -> None:
    path, body = secret
    if how == "signer-key":  # the service's signing key, in data_dir/pki (no CA key is there)
        path = ensure_local_pki(get_settings().pki_dir).signer_key
        body = path.read_bytes()
    target = {
        # from the upload's scratch folder (store/tmp/upload-*) up to the data directory
        "relative": f"../../../{path.name}",
        "etc-shadow": "/etc/shadow",
    }.get(how, str(path))
    before = _stored(db)
    response = _upload(
        client, tokens["alice"], _torchscript(_Reads(target, len(body))), model_name="leak.ts"
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("the model failed validation: ")
    assert not _leaks(response.text, body)
    assert "/" not in detail  # no internal paths
    assert _stored(db) == before
    _assert_jailed(jailed_runs[0])
    assert client.get("/healthz").status_code == 200


def test_a_network_that_writes_outside_its_folder_changes_nothing(
    client: TestClient, tokens: dict[str, str], secret: tuple[Path, bytes]
) -> None:
    path, body = secret
    response = _upload(
        client,
        tokens["alice"],
        _torchscript(_Reads(str(path), len(body), shared=True)),
        model_name="write.ts",
    )
    assert response.status_code == 422, response.text
    assert path.read_bytes() == body
    assert not _leaks(response.text, body)


def _memory_bomb(elements: int) -> bytes:
    """x + sum(ConstantOfShape([elements])) * 0: a few hundred bytes that allocate 4 bytes per
    element when run."""
    size = [32, 32]  # MANIFEST's image_size
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [elements])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, *size])],
        initializer=[shape, helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    serialised: bytes = model.SerializeToString()
    return serialised


def test_a_memory_bomb_is_refused(client: TestClient, db: Session, tokens: dict[str, str]) -> None:
    capped = get_settings().model_copy(update={"sandbox_memory_bytes": 2 * 2**30})
    client.app.dependency_overrides[get_settings] = lambda: capped  # type: ignore[attr-defined]
    bomb = _memory_bomb(2**30)  # 4 GiB of float32
    assert len(bomb) < 400
    onnx.checker.check_model(onnx.load_from_string(bomb))
    before = _stored(db)
    response = _upload(client, tokens["alice"], bomb)
    assert response.status_code == 422, response.text
    assert "the memory limit was exceeded" in response.json()["detail"]
    assert _stored(db) == before
    assert client.get("/healthz").status_code == 200


def test_the_memory_limit_is_on_by_default() -> None:
    assert Settings().sandbox_memory_bytes == 8 * 2**30


def _zip_bomb(expanded: int) -> bytes:
    """A torch.export-looking archive with one member of ``expanded`` zero bytes, deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("model/archive_format", "pt2")
        with z.open("model/data/weights/weight_0", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(expanded // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def test_an_archive_that_expands_1000x_is_refused(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    bomb = _zip_bomb(256 * 2**20)
    assert len(bomb) * 900 < 256 * 2**20
    before = _stored(db)
    response = _upload(client, tokens["alice"], bomb, model_name="model.pt2")
    assert response.status_code == 413, response.text
    assert "would expand to 268435459 bytes (1028 times its size)" in response.json()["detail"]
    assert response.json()["field"] == "model"
    assert _stored(db) == before


def _nifti_gz(shape: tuple[int, int, int]) -> bytes:
    """A NIfTI-1 uint8 volume of zeros, gzipped (about 1000x)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)  # uint8, 8 bits
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\x00"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as out:
        out.write(bytes(header))
        plane = bytes(shape[0] * shape[1])
        for _ in range(shape[2]):
            out.write(plane)
    return buffer.getvalue()


def test_an_image_that_expands_1000x_is_refused(client: TestClient, tokens: dict[str, str]) -> None:
    bomb = _nifti_gz((1024, 1024, 300))  # 300 MiB of voxels
    assert len(bomb) * 900 < 300 * 2**20
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "bomb"},
        files=[("files", ("scan.nii.gz", bomb))],
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("scan.nii.gz: ")
    assert "expands to more than 268435456 bytes" in detail
    assert "/" not in detail.removeprefix("scan.nii.gz: ")
    names = [
        s["name"] for s in client.get("/api/v1/images", headers=bearer(tokens["alice"])).json()
    ]
    assert names == ["builtin"]


def test_an_image_whose_header_lies_is_refused_before_decoding(
    client: TestClient, tokens: dict[str, str]
) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (65536, 65536)}
    )
    response = client.post(
        "/api/v1/images",
        headers=bearer(tokens["alice"]),
        data={"name": "liar"},
        files=[("files", ("x.npy", buffer.getvalue() + bytes(64)))],
    )
    assert response.status_code == 422, response.text
    assert "at most 268435456 bytes" in response.json()["detail"]


def test_without_the_jail_models_are_refused_not_run_bare(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    missing = get_settings().model_copy(update={"sandbox_bwrap": "/nonexistent/bwrap"})
    client.app.dependency_overrides[get_settings] = lambda: missing  # type: ignore[attr-defined]
    before = _stored(db)
    response = _upload(client, tokens["alice"], _torchscript(_Identity()), model_name="m.ts")
    assert response.status_code == 503, response.text
    assert "untrusted models run only in a jail" in response.json()["detail"]
    assert _stored(db) == before


class _Prints(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print('{"gradient_access": "white-box", "forged": true}')  # noqa: T201 (the hostile part)
        return x * 1.0


def test_a_network_that_prints_cannot_forge_the_summary(
    client: TestClient, db: Session, tokens: dict[str, str]
) -> None:
    before = _stored(db)
    response = _upload(client, tokens["alice"], _torchscript(_Prints()), model_name="p.ts")
    assert response.status_code == 422, response.text
    assert "wrote to standard output" in response.json()["detail"]
    assert _stored(db) == before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"[1, 2]", "must hold a mapping of fields, got list"),
        (b"{not json", "is not valid JSON/YAML"),
        (b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "levels deep"),
    ],
)
def test_a_torch_export_archive_with_a_malformed_config_is_refused(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    tmp_path: Path,
    config: bytes,
    message: str,
) -> None:
    before = _stored(db)
    archive = pt2_with_config(tmp_path / "model.pt2", config)
    response = _upload(client, tokens["alice"], archive.read_bytes(), model_name="model.pt2")
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["field"] == "model"
    assert "model_weights_config.json" in body["detail"]
    assert message in body["detail"]
    assert _stored(db) == before


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b'{"name": "caf\xe9"}', "manifest manifest.json is not UTF-8 text"),
        (b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "manifest.json nests"),
        (b"name: " + b"[" * 50_000, "manifest.json nests"),
    ],
)
def test_an_unreadable_or_deep_manifest_is_refused_naming_only_its_file(
    client: TestClient, db: Session, tokens: dict[str, str], manifest: bytes, message: str
) -> None:
    before = _stored(db)
    onnx_model = io.BytesIO()
    onnx.save_model(conv_model(), onnx_model)
    response = _upload(client, tokens["alice"], onnx_model.getvalue(), manifest=manifest)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "manifest"
    assert message in body["detail"]
    assert str(get_settings().data_dir.resolve()) not in body["detail"]
    assert "/" not in body["detail"]  # no path of the service's
    assert _stored(db) == before
