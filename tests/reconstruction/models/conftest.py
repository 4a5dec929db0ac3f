"""Small ONNX graphs and manifests built in the test, so every bad input is made on purpose."""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

SIZE = 32


def conv_model(
    *,
    channels_in: int = 2,
    channels_out: int = 2,
    size: int | str = "batch",
    spatial: int = SIZE,
    extra_nodes: list[onnx.NodeProto] | None = None,
    output: str = "y",
    opset: int = 18,
    domains: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    """``y = x[:, :channels_out] + conv3x3(x)`` with a small seeded kernel (input ``x``)."""
    rng = np.random.default_rng(0)
    weight = (0.01 * rng.standard_normal((channels_out, channels_in, 3, 3))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    if channels_in == channels_out:
        nodes.append(helper.make_node("Add", ["x", "c"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    nodes += extra_nodes or []
    graph = helper.make_graph(
        nodes,
        "test",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [size, channels_in, spatial, spatial]
            )
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [numpy_helper.from_array(weight, "w")],
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 10
    return model


def write_manifest(folder: Path, **overrides: Any) -> Path:
    manifest: dict[str, Any] = {
        "name": "test-net",
        "modality": "mri",
        "image_size": [SIZE, SIZE],
        "input": {"domain": "image", "layout": "complex2"},
        "output": {"layout": "complex2"},
        "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.3, "seed": 0}},
        "intensity_range": [0.0, 1.0],
    }
    manifest.update(overrides)
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def save_model(tmp_path: Path) -> Callable[..., Path]:
    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save_model(model, str(path))
        return path

    return save


class Tiny(torch.nn.Module):
    """A one-convolution network, 2 channels in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


def rewrite_pt2(source: Path, target: Path, edit: dict[str, bytes]) -> None:
    """``source`` copied to ``target``, each member whose name ends with a key of ``edit``
    replaced by its bytes."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, replacement in edit.items():
                if item.filename.endswith(suffix):
                    data = replacement
            zout.writestr(item, data)


class _Witness:
    """Unpickled, it creates the file at ``path`` (what a hostile pickle could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def pt2_with_config(path: Path, config: bytes, *, compress_type: int = zipfile.ZIP_STORED) -> Path:
    """A zip archive that reads as a torch.export archive (it has an ``archive_format``
    member) whose weights ``*_config.json`` member is ``config``, written as is."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr(
            "model/data/weights/model_weights_config.json", config, compress_type=compress_type
        )
    return path


def hostile_pt2(folder: Path) -> tuple[Path, Path]:
    """A torch.export archive of :class:`Tiny` whose sample inputs are a pickle that creates a
    file when unpickled: the archive, and the file that must never appear."""
    good, hostile, witness = folder / "good.pt2", folder / "hostile.pt2", folder / "unpickled"
    torch.export.save(torch.export.export(Tiny(), (torch.rand(1, 2, 8, 8),)), str(good))
    rewrite_pt2(good, hostile, {"sample_inputs/model.pt": pickle.dumps(_Witness(witness))})
    return hostile, witness
