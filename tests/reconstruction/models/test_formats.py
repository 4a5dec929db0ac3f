from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from reconstruction.models import ModelError, detect_format, sha256_file
from tests.reconstruction.models.conftest import conv_model


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


def test_recognises_each_accepted_format(tmp_path: Path) -> None:
    import onnx

    onnx.save_model(conv_model(), str(tmp_path / "a.bin"))
    assert detect_format(tmp_path / "a.bin") == "onnx"
    x = torch.rand(1, 2, 8, 8)
    torch.export.save(torch.export.export(_Tiny(), (x,)), str(tmp_path / "b.bin"))
    assert detect_format(tmp_path / "b.bin") == "torch.export"
    with pytest.warns(FutureWarning):
        torch.jit.trace(_Tiny(), x).save(str(tmp_path / "c.bin"))
    assert detect_format(tmp_path / "c.bin") == "torchscript"


@pytest.mark.parametrize("what", ["state_dict", "module", "raw_pickle"])
def test_pickles_are_refused_with_advice(tmp_path: Path, what: str) -> None:
    path = tmp_path / "model.pt"
    if what == "state_dict":
        torch.save(_Tiny().state_dict(), path)
    elif what == "module":
        torch.save(_Tiny(), path)
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


def _rewrite_pt2(source: Path, target: Path, edit: dict[str, bytes]) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, replacement in edit.items():
                if item.filename.endswith(suffix):
                    data = replacement
            zout.writestr(item, data)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt2_archives_that_would_unpickle_are_refused(tmp_path: Path) -> None:
    x = torch.rand(1, 2, 8, 8)
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_Tiny(), (x,)), str(good))
    with zipfile.ZipFile(good) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    _rewrite_pt2(
        good, tmp_path / "p.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ModelError, match="as a pickle"):
        detect_format(tmp_path / "p.pt2")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    import pickle

    payload = pickle.dumps(Evil())
    _rewrite_pt2(good, tmp_path / "s.pt2", {"sample_inputs/model.pt": payload})
    with pytest.raises(ModelError, match="not plain tensor data"):
        detect_format(tmp_path / "s.pt2")


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
