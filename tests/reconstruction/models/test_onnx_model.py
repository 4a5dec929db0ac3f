"""ONNX intake: every rejection the issue lists, external data, and the torch conversion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from reconstruction.models import ModelError, load
from reconstruction.models.onnx_model import OrtNetwork, convert_to_torch
from tests.reconstruction.models.conftest import conv_model, write_manifest

SaveModel = Callable[..., Path]


def test_onnx_round_trip_is_white_box(tmp_path: Path, save_model: SaveModel) -> None:
    model = load(save_model(conv_model()), write_manifest(tmp_path))
    s = model.summary()
    assert (s["format"], s["gradient_access"], s["batch"]) == ("onnx", "white-box", "dynamic")
    assert s["parity"]["route"] == "onnx2pytorch"
    assert s["parity_error"] < 1e-6
    assert s["input"]["shape"] == [-1, 2, 32, 32]


def test_conversion_matches_onnxruntime_and_has_gradients() -> None:
    proto = conv_model(opset=20)
    ort = OrtNetwork(proto)
    probes = [[torch.rand(2, 2, 32, 32)], [torch.rand(2, 2, 32, 32)]]
    result = convert_to_torch(proto, ort, probes)
    assert result.module is not None
    assert result.max_relative_difference is not None
    assert result.max_relative_difference < 1e-6
    x = probes[0][0].requires_grad_(True)
    result.module(x).sum().backward()
    assert x.grad is not None


def test_conversion_falls_back_and_records_every_attempt() -> None:
    proto = conv_model()
    ort = OrtNetwork(proto)
    probes = [[torch.rand(1, 2, 32, 32)]]
    result = convert_to_torch(proto, ort, probes, tol=-1.0)  # nothing can pass
    assert result.module is None
    assert [a["route"] for a in result.attempts] == ["onnx2pytorch", "onnx2torch"]
    assert all("differs from onnxruntime" in a["error"] for a in result.attempts)


def test_no_matching_conversion_means_black_box(tmp_path: Path, save_model: SaveModel) -> None:
    model = load(save_model(conv_model()), write_manifest(tmp_path), parity_tolerance=-1.0)
    assert model.gradient_access == "black-box"
    with pytest.raises(ModelError, match="black-box"):
        model.reconstructor()
    f = model.reconstructor(differentiable=False)
    y = model.operator.A(torch.rand(2, 32, 32))
    assert f(y).shape == (2, 32, 32)


def test_fixed_batch_one_is_looped(tmp_path: Path, save_model: SaveModel) -> None:
    model = load(save_model(conv_model(size=1)), write_manifest(tmp_path))
    assert model.max_batch == 1
    y = model.operator.A(torch.rand(3, 32, 32))
    assert model.reconstructor()(y).shape == (3, 32, 32)


def test_corrupted_onnx(tmp_path: Path, save_model: SaveModel) -> None:
    path = save_model(conv_model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"not a readable ONNX model|fails the ONNX checker"):
        load(path, write_manifest(tmp_path))


def test_checker_failure(tmp_path: Path, save_model: SaveModel) -> None:
    bad = helper.make_node("Relu", ["nowhere"], ["z"])
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        load(save_model(conv_model(extra_nodes=[bad], output="z")), write_manifest(tmp_path))


def test_custom_domain_is_refused(tmp_path: Path, save_model: SaveModel) -> None:
    """Refused by the node that uses a custom domain, whatever the graph imports."""
    custom = helper.make_node("Exploit", ["y"], ["z"], name="payload", domain="com.example")
    model = conv_model(extra_nodes=[custom], output="z", domains=(("com.example", 1),))
    with pytest.raises(
        ModelError, match=r"node 'payload' uses the custom operator com\.example::Exploit"
    ):
        load(save_model(model), write_manifest(tmp_path))
    model.ClearField("opset_import")
    model.opset_import.append(helper.make_opsetid("", 18))
    with pytest.raises(ModelError, match=r"custom operator com\.example::Exploit"):
        load(save_model(model), write_manifest(tmp_path))


@pytest.mark.parametrize("opset", [11, 40])
def test_unsupported_opsets(tmp_path: Path, save_model: SaveModel, opset: int) -> None:
    with pytest.raises(ModelError, match=f"opset {opset} is not supported"):
        load(save_model(conv_model(opset=opset)), write_manifest(tmp_path))


def test_size_cap(tmp_path: Path, save_model: SaveModel) -> None:
    with pytest.raises(ModelError, match="the limit is 100"):
        load(save_model(conv_model()), write_manifest(tmp_path), max_bytes=100)


def _external(tmp_path: Path, location: str = "weights.data") -> Path:
    model = conv_model()
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="weights.data", size_threshold=0
    )
    if location != "weights.data":
        saved = onnx.load(str(path), load_external_data=False)
        for tensor in saved.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(saved, str(path))
    return path


def test_external_data_beside_the_model_is_accepted(tmp_path: Path) -> None:
    model = load(_external(tmp_path), write_manifest(tmp_path))
    assert model.gradient_access == "white-box"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../weights.data", "plain file name"),
        ("/etc/passwd", "plain file name"),
        ("sub/weights.data", "plain file name"),
        ("absent.data", "is missing"),
    ],
)
def test_external_data_outside_or_missing(tmp_path: Path, location: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load(_external(tmp_path, location), write_manifest(tmp_path))


def test_external_data_link_is_refused(tmp_path: Path) -> None:
    path = _external(tmp_path)
    (tmp_path / "weights.data").rename(tmp_path / "elsewhere.data")
    (tmp_path / "weights.data").symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(ModelError, match="or is a link"):
        load(path, write_manifest(tmp_path))
