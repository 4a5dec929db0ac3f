"""Validation on load: every mismatch and bad output gets a precise error; torch formats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import helper

from reconstruction.models import ModelError, load, probe_image
from tests.reconstruction.models.conftest import SIZE, conv_model, write_manifest

SaveModel = Callable[..., Path]


class _Residual(torch.nn.Module):
    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.conv(x)
        return out


def _export(tmp_path: Path, size: int = SIZE, dynamic: bool = True) -> Path:
    x = torch.rand(2, 2, size, size)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    program = torch.export.export(_Residual(), (x,), dynamic_shapes=shapes)
    torch.export.save(program, str(tmp_path / "model.pt2"))
    return tmp_path / "model.pt2"


def test_torch_export_round_trip(tmp_path: Path) -> None:
    model = load(_export(tmp_path), write_manifest(tmp_path))
    assert (model.format, model.gradient_access, model.max_batch) == (
        "torch.export",
        "white-box",
        None,
    )
    f = model.reconstructor()
    y = model.operator.A(torch.rand(3, SIZE, SIZE)).requires_grad_(True)
    f(y).abs().sum().backward()
    assert y.grad is not None
    assert model.validation["psnr_db"] > 10


def test_torchscript_round_trip_notes_the_deprecation(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning):
        torch.jit.trace(_Residual(), torch.rand(1, 2, SIZE, SIZE)).save(str(tmp_path / "m.ts"))
    model = load(tmp_path / "m.ts", write_manifest(tmp_path))
    assert (model.format, model.gradient_access) == ("torchscript", "white-box")
    assert any("deprecated" in note for note in model.notes)


def test_static_batch_torch_export_is_looped(tmp_path: Path) -> None:
    x = torch.rand(1, 2, SIZE, SIZE)
    torch.export.save(torch.export.export(_Residual(), (x,)), str(tmp_path / "m.pt2"))
    model = load(tmp_path / "m.pt2", write_manifest(tmp_path))
    assert model.max_batch == 1
    assert model.reconstructor()(model.operator.A(torch.rand(2, SIZE, SIZE))).shape[0] == 2


def test_torch_network_failing_on_the_described_input(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"failed on the input the manifest describes \(shape"):
        load(_export(tmp_path, size=16), write_manifest(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"spatial": 64}, "image_size"),
        ({"channels_in": 1, "channels_out": 2}, "input.layout"),
    ],
)
def test_onnx_input_mismatch_names_the_field(
    tmp_path: Path, save_model: SaveModel, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ModelError, match=f"manifest field '{field}'"):
        load(save_model(conv_model(**kwargs)), write_manifest(tmp_path))


def test_wrong_output_shape(tmp_path: Path, save_model: SaveModel) -> None:
    with pytest.raises(ModelError, match=r"'output.layout'.*expect an output of shape \[1, 2"):
        load(save_model(conv_model(channels_out=1)), write_manifest(tmp_path))


def _tail(*ops: str) -> list[onnx.NodeProto]:
    names = ["y"] + [f"t{i}" for i in range(len(ops) - 1)] + ["z"]
    nodes = []
    for i, op in enumerate(ops):
        inputs = [names[i], names[i]] if op == "Sub" else [names[i]]
        nodes.append(helper.make_node(op, inputs, [names[i + 1]]))
    return nodes


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (("Abs", "Neg", "Log"), "non-finite values"),
        (("Exp", "Exp"), "'intensity_range'.*more than 4x the range"),
        (("Sub",), "constant image"),
    ],
)
def test_bad_outputs(
    tmp_path: Path, save_model: SaveModel, ops: tuple[str, ...], message: str
) -> None:
    model = conv_model(extra_nodes=_tail(*ops), output="z")
    with pytest.raises(ModelError, match=message):
        load(save_model(model), write_manifest(tmp_path))


def test_ct_and_samples_domains(tmp_path: Path, save_model: SaveModel) -> None:
    ct = write_manifest(
        tmp_path,
        modality="ct",
        input={"layout": "real1"},
        output={"layout": "real1", "part": "real"},
        sampling={"angles": 30},
    )
    model = load(save_model(conv_model(channels_in=1, channels_out=1)), ct)
    assert model.summary()["operator"] == "ParallelBeamCT"
    assert not model.fixed_size
    assert model.validation["psnr_db"] > 10


def test_probe_image_follows_the_intensity_range(tmp_path: Path) -> None:
    from reconstruction.models import load_manifest

    manifest = load_manifest(write_manifest(tmp_path, intensity_range=[-1.0, 3.0]))
    image = probe_image(manifest)
    assert image.shape == (1, SIZE, SIZE)
    assert float(image.min()) == pytest.approx(-1.0)
    assert float(image.max()) == pytest.approx(3.0)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load(tmp_path / "nope.onnx", write_manifest(tmp_path))


class _AlmostConstant(torch.nn.Module):
    """A constant grey image plus ``leak`` times the input: constant to float32 rounding for
    ``leak = 1e-7`` (the exact ``std() == 0`` test passes it), an image for larger ``leak``."""

    def __init__(self, leak: float) -> None:
        super().__init__()
        self.leak = leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = 0.5 + self.leak * x
        return out


@pytest.mark.parametrize(("leak", "constant"), [(1e-7, True), (1e-6, True), (1e-2, False)])
def test_constant_output_is_found_relative_to_its_scale(
    tmp_path: Path, leak: float, constant: bool
) -> None:
    from reconstruction.models import from_module, load_manifest

    manifest = load_manifest(write_manifest(tmp_path))
    if constant:
        with pytest.raises(ModelError, match="constant image"):
            from_module(_AlmostConstant(leak), manifest)
    else:
        assert from_module(_AlmostConstant(leak), manifest).validation["output_max"] > 0.5
