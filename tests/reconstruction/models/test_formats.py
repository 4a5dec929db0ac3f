from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from reconstruction.documents import MAX_DEPTH
from reconstruction.models import ModelError, detect_format, sha256_file
from reconstruction.models.formats import MAX_CONFIG_BYTES, pickled_members
from tests.reconstruction.models.conftest import (
    Tiny,
    conv_model,
    hostile_pt2,
    pt2_with_config,
    rewrite_pt2,
)


def test_recognises_each_accepted_format(tmp_path: Path) -> None:
    import onnx

    onnx.save_model(conv_model(), str(tmp_path / "a.bin"))
    assert detect_format(tmp_path / "a.bin") == "onnx"
    x = torch.rand(1, 2, 8, 8)
    torch.export.save(torch.export.export(Tiny(), (x,)), str(tmp_path / "b.bin"))
    assert detect_format(tmp_path / "b.bin") == "torch.export"
    with pytest.warns(FutureWarning):
        torch.jit.trace(Tiny(), x).save(str(tmp_path / "c.bin"))
    assert detect_format(tmp_path / "c.bin") == "torchscript"


@pytest.mark.parametrize("what", ["state_dict", "module", "raw_pickle"])
def test_pickles_are_refused_with_advice(tmp_path: Path, what: str) -> None:
    path = tmp_path / "model.pt"
    if what == "state_dict":
        torch.save(Tiny().state_dict(), path)
    elif what == "module":
        torch.save(Tiny(), path)
    else:
        import pickle

        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelError, match="never loaded: export the network to ONNX"):
        detect_format(path)


def test_unknown_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        detect_format(tmp_path / "empty")
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ModelError, match="not a model format we accept"):
        detect_format(tmp_path / "text")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(ModelError, match="zip archive but not a model format"):
        detect_format(tmp_path / "other.zip")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt2_archives_that_would_unpickle_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.rand(1, 2, 8, 8),)), str(good))
    with zipfile.ZipFile(good) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    rewrite_pt2(
        good, tmp_path / "p.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ModelError, match="as a pickle"):
        detect_format(tmp_path / "p.pt2")


def test_the_format_check_unpickles_nothing_and_imports_no_torch(tmp_path: Path) -> None:
    """The service's web process checks uploads with it: a torch.export archive whose sample
    inputs are a hostile pickle is recognised, its pickle left for the jailed load to refuse
    (:func:`reconstruction.models.torch_model.load_torch_export`)."""
    hostile, witness = hostile_pt2(tmp_path)
    assert detect_format(hostile) == "torch.export"
    assert not witness.exists()
    with zipfile.ZipFile(hostile) as z:
        assert pickled_members(z.namelist()) == [
            n for n in z.namelist() if n.endswith("sample_inputs/model.pt")
        ]
    code = (
        "import sys; from reconstruction.models.formats import detect_format; "
        f"print(detect_format({str(hostile)!r}), 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["torch.export", "False"]


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_a_damaged_zip_is_a_model_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "m.pt", "w") as archive:
        archive.writestr("a/code/x.py", "y" * 100)
    data = bytearray((tmp_path / "m.pt").read_bytes())
    start = data.find(b"PK\x01\x02")  # the central directory's first entry
    data[start : start + 4] = b"XXXX"
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged zip archive"):
        detect_format(tmp_path / "m.pt")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"[1, 2]", "must hold a mapping of fields, got list"),
        (b"{not json", "is not valid JSON/YAML"),
        (b'"text"', "must hold a mapping of fields, got str"),
        (b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", f"more than {MAX_DEPTH} levels"),
        (b'{"config": "\xff\xfe"}', "is not UTF-8 JSON"),
        (b'{"config": [1]}', "is not a torch.export tensor configuration"),
        (b'{"config": {"w": 3}}', "is not a torch.export tensor configuration"),
        (
            b'{"config": {"w": {"use_pickle": true}}, "x": "' + b"y" * MAX_CONFIG_BYTES + b'"}',
            "at most",
        ),
    ],
)
def test_a_malformed_pt2_config_is_a_model_error(
    tmp_path: Path, config: bytes, message: str
) -> None:
    archive = pt2_with_config(tmp_path / "m.pt2", config, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelError, match=message) as info:
        detect_format(archive)
    assert "model_weights_config.json" in str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_a_pt2_config_that_cannot_be_inflated_is_a_model_error(tmp_path: Path) -> None:
    archive = pt2_with_config(tmp_path / "m.pt2", b"{}" * 1000, compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(archive.read_bytes())
    start = data.find(b"model_weights_config.json") + len("model_weights_config.json")
    data[start : start + 4] = b"\xff" * 4  # the member's deflate stream, damaged
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged zip archive"):
        detect_format(archive)
    with zipfile.ZipFile(tmp_path / "odd.pt2", "w") as odd:
        odd.writestr("model/archive_format", "pt2")
        odd.writestr("model/data/weights/model_weights_config.json", "{}", zipfile.ZIP_LZMA)
    data = bytearray((tmp_path / "odd.pt2").read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # the member's method: 99 (AES)
        at = data.rfind(header)
        offset = 8 if header == b"PK\x03\x04" else 10
        data[at + offset : at + offset + 2] = (99).to_bytes(2, "little")
    (tmp_path / "odd.pt2").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="a zip archive we cannot read"):
        detect_format(tmp_path / "odd.pt2")
