"""Quantized and float16 networks as onnxruntime's tools write them: intake, the
straight-through surrogate (onnxruntime forward, the float32 shadow's gradient), and every bad
input refused with the node it names."""

from __future__ import annotations

import collections
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from reconstruction.data import random_ellipses
from reconstruction.models import LoadedModel, ModelError, Reconstructor, load
from reconstruction.models.onnx_model import OrtNetwork
from reconstruction.models.quantized import QUANTIZATION_CONTRIB_OPS, float_shadow
from reconstruction.models.surrogate import SURROGATE_TOLERANCE, StraightThrough
from tests.reconstruction.models.conftest import SIZE, conv_model, write_manifest
from tests.reconstruction.models.quantization import (
    QOPERATOR_OPS,
    every_op_model,
    quantize,
    single_op_model,
    to_float16,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "unet-mri"
SaveModel = Callable[..., Path]


def _calibration(size: int, manifest: Path, count: int = 4) -> np.ndarray:
    """``count`` network inputs (zero-filled images of random ellipses) for calibration."""
    model = load(manifest.parent / "float.onnx", manifest)
    rec = model.reconstructor(differentiable=False)
    truth = torch.from_numpy(random_ellipses(count, size, 5))
    return rec.network_input(model.operator.A(truth)).numpy()


@pytest.fixture(scope="module")
def every_op(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The float :func:`every_op_model` at 32x32, its manifest and calibration inputs."""
    folder = tmp_path_factory.mktemp("every-op")
    source = folder / "float.onnx"
    onnx.save(every_op_model(), str(source))
    manifest = write_manifest(folder)
    return source, manifest, _calibration(SIZE, manifest)


def _route(model: LoadedModel) -> tuple[str, str, str]:
    s = model.summary()
    return s["gradient_access"], s["gradient_route"], s["precision"]


def test_the_quantizers_file_of_the_example_unet_is_taken_in(tmp_path: Path) -> None:
    """The issue's case: onnxruntime's pre-processing, then ``quantize_static`` (QDQ, int8),
    of examples/unet-mri: nine imported domains no node uses, taken in with a surrogate."""
    for name in ("manifest.json", "mask.npy"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    shutil.copy(EXAMPLE / "model.onnx", tmp_path / "float.onnx")
    manifest = tmp_path / "manifest.json"
    path = quantize(
        tmp_path / "float.onnx",
        tmp_path / "int8.onnx",
        _calibration(128, manifest),
        preprocess=True,
    )
    proto = onnx.load(str(path))
    domains = {o.domain for o in proto.opset_import}
    assert {"ai.onnx.ml", "com.microsoft", "ai.onnx.training"} <= domains
    assert {n.domain for n in proto.graph.node} == {""}
    model = load(path, manifest)
    assert _route(model) == ("white-box", "straight-through surrogate", "QDQ")
    assert 0 < model.summary()["parity_error"] < SURROGATE_TOLERANCE
    assert model.forward_backend == "onnxruntime"


@pytest.mark.parametrize(
    ("form", "per_channel", "expected"),
    [
        ("QDQ", False, {"QuantizeLinear", "DequantizeLinear"}),
        ("QDQ", True, {"QuantizeLinear", "DequantizeLinear"}),
        ("QOperator", False, QOPERATOR_OPS),
        ("QOperator", True, QOPERATOR_OPS),
        ("dynamic", False, {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}),
    ],
)
def test_every_quantized_form_gets_a_surrogate(
    tmp_path: Path,
    every_op: tuple[Path, Path, np.ndarray],
    form: str,
    per_channel: bool,
    expected: frozenset[str],
) -> None:
    source, manifest, calibration = every_op
    path = quantize(source, tmp_path / "q.onnx", calibration, form=form, per_channel=per_channel)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert expected <= ops
    model = load(path, manifest)
    assert _route(model) == ("white-box", "straight-through surrogate", form)
    parity = model.summary()["parity"]
    assert parity["shadow_conversion"]["max_relative_difference"] < 1e-4
    assert 0 < parity["max_relative_difference"] < SURROGATE_TOLERANCE


def test_the_allowlist_is_what_the_qoperator_format_writes() -> None:
    contrib = QOPERATOR_OPS - {"QLinearConv", "QLinearMatMul"}
    assert contrib | {"QuantizeLinear", "DequantizeLinear"} == QUANTIZATION_CONTRIB_OPS


def test_float16_gets_a_surrogate(tmp_path: Path, save_model: SaveModel) -> None:
    half = to_float16(every_op_model())
    assert {t.data_type for t in half.graph.initializer} == {
        TensorProto.FLOAT16,
        TensorProto.INT64,
    }
    model = load(save_model(half), write_manifest(tmp_path))
    assert _route(model) == ("white-box", "straight-through surrogate", "float16")
    assert model.summary()["parity_error"] < 1e-2


def test_float_graphs_stay_exact(tmp_path: Path, save_model: SaveModel) -> None:
    """Imported domains no node uses do not make a float graph anything but float."""
    proto = conv_model(domains=(("ai.onnx.ml", 5), ("com.microsoft", 1)))
    model = load(save_model(proto), write_manifest(tmp_path))
    assert _route(model) == ("white-box", "exact", "float32")
    assert model.summary()["parity"]["route"] == "onnx2pytorch"


@pytest.fixture(scope="module")
def qdq(
    every_op: tuple[Path, Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    source, manifest, calibration = every_op
    path = tmp_path_factory.mktemp("qdq") / "q.onnx"
    return quantize(source, path, calibration, form="QDQ"), manifest


def test_forward_is_onnxruntime_and_backward_the_shadow(qdq: tuple[Path, Path]) -> None:
    model = load(*qdq)
    assert isinstance(model.module, StraightThrough)
    y = model.operator.A(torch.from_numpy(random_ellipses(3, SIZE, 9)))
    fast = model.reconstructor(differentiable=False)
    assert isinstance(fast._net, OrtNetwork)
    with torch.no_grad():
        real = fast(y)
    yy = y.clone().requires_grad_(True)
    out = model.reconstructor()(yy)
    assert torch.equal(out.detach(), real)  # the outputs judged are the real network's
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out.real * weights).sum().backward()
    shadow = Reconstructor(model.module.shadow, model.operator, model.manifest)
    ys = y.clone().requires_grad_(True)
    shadow_out = shadow(ys)
    assert not torch.equal(shadow_out.detach(), real)  # the shadow rounds nothing
    (shadow_out.real * weights).sum().backward()
    assert yy.grad is not None
    assert ys.grad is not None
    assert float(yy.grad.abs().max()) > 0
    torch.testing.assert_close(yy.grad, ys.grad)


def test_exact_autograd_through_the_rounding_is_zero(qdq: tuple[Path, Path]) -> None:
    """Why the surrogate: the quantized graph as it rounds has no gradient almost anywhere
    (its QuantizeLinear rounds); the shadow has the network's."""
    proto = onnx.load(str(qdq[0]))
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    first = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale = float(values[first.input[1]])
    zero = float(values[first.input[2]])
    x = torch.rand(1, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x = scale * (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero)  # on its grid
    real = OrtNetwork(proto)(x)
    shadow = OrtNetwork(float_shadow(proto))(x)
    assert 0 < float((real - shadow).abs().max()) < SURROGATE_TOLERANCE * float(real.abs().max())
    nudged = x.clone()
    nudged[0, 0, 5, 5] += 0.1 * scale  # rounds back to the same input
    assert torch.equal(OrtNetwork(proto)(nudged), real)  # piecewise constant: zero gradient
    assert not torch.equal(OrtNetwork(float_shadow(proto))(nudged), shadow)


def test_fixed_batch_quantized_network_is_looped(tmp_path: Path, save_model: SaveModel) -> None:
    source = save_model(conv_model(size=1), "float.onnx")
    manifest = write_manifest(tmp_path)
    calibration = np.random.default_rng(0).random((3, 2, SIZE, SIZE)).astype(np.float32)
    model = load(quantize(source, tmp_path / "q.onnx", calibration), manifest)
    assert model.max_batch == 1
    assert model.gradient_route == "straight-through surrogate"
    y = model.operator.A(torch.rand(3, SIZE, SIZE)).requires_grad_(True)
    out = model.reconstructor()(y)
    assert out.shape == (3, SIZE, SIZE)
    out.abs().sum().backward()
    assert y.grad is not None
    assert bool((y.grad.abs().flatten(1).amax(1) > 0).all())


def test_a_far_shadow_means_gradient_free(qdq: tuple[Path, Path]) -> None:
    model = load(*qdq, surrogate_tolerance=1e-9)
    assert _route(model) == ("black-box", "gradient-free", "QDQ")
    assert model.module is None
    assert any("differs from the network by" in note for note in model.notes)
    with pytest.raises(ModelError, match="black-box"):
        model.reconstructor()
    y = model.operator.A(torch.rand(2, SIZE, SIZE))
    assert model.reconstructor(differentiable=False)(y).shape == (2, SIZE, SIZE)


def test_an_unsupported_quantized_operator_is_refused(
    qdq: tuple[Path, Path], tmp_path: Path
) -> None:
    proto = onnx.load(str(qdq[0]))
    node = proto.graph.node[-1]
    node.op_type, node.domain, node.name = "QAttention", "com.microsoft", "last"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = tmp_path / "q.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(
        ModelError, match=r"node 'last' uses com\.microsoft::QAttention, which is not one of"
    ):
        load(path, qdq[1])


@pytest.mark.parametrize("scale", [0.0, np.nan, np.inf, -0.5])
def test_a_bad_quantization_scale_is_refused(
    qdq: tuple[Path, Path], tmp_path: Path, scale: float
) -> None:
    proto = onnx.load(str(qdq[0]))
    node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    node.name = "quantize-input"
    index = next(i for i, t in enumerate(proto.graph.initializer) if t.name == node.input[1])
    value = numpy_helper.to_array(proto.graph.initializer[index])
    bad = np.full_like(value, scale)
    proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(bad, node.input[1]))
    path = tmp_path / "q.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(
        ModelError, match=r"node 'quantize-input' \(QuantizeLinear\): quantization scale"
    ):
        load(path, qdq[1])


def test_a_float16_overflow_is_refused(tmp_path: Path, save_model: SaveModel) -> None:
    """A constant beyond float16's range (65504) makes the output infinite: refused, naming
    the first node whose float16 output is not finite (onnxruntime's CPU provider computes
    most float16 operators in float32, so a constant or a stored tensor is where it shows)."""
    gains = [
        numpy_helper.from_array(np.array(1e5, np.float32), "up"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "down"),
    ]
    nodes = [
        helper.make_node("Mul", ["y", "up"], ["g1"], name="scale-up"),
        helper.make_node("Mul", ["g1", "down"], ["z"], name="scale-down"),
    ]
    proto = conv_model(extra_nodes=nodes, output="z")
    proto.graph.initializer.extend(gains)
    manifest = write_manifest(tmp_path)
    assert load(save_model(proto), manifest).gradient_route == "exact"  # fine in float32
    with pytest.warns(RuntimeWarning, match="overflow"):
        half = to_float16(proto)  # 1e5 is inf in float16
    with pytest.raises(ModelError, match=r"overflows.*first at node 'scale-up'"):
        load(save_model(half), manifest)


def test_qoperator_counts_of_the_example_unet(tmp_path: Path) -> None:
    """The QOperator file of the example network uses contrib operators of the allowlist
    only (QLinearConcat, QLinearAdd), with the com.microsoft import they need."""
    for name in ("manifest.json", "mask.npy"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    shutil.copy(EXAMPLE / "model.onnx", tmp_path / "float.onnx")
    manifest = tmp_path / "manifest.json"
    path = quantize(
        tmp_path / "float.onnx",
        tmp_path / "q.onnx",
        _calibration(128, manifest, 2),
        form="QOperator",
    )
    proto = onnx.load(str(path))
    contrib = collections.Counter(n.op_type for n in proto.graph.node if n.domain)
    assert set(contrib) == {"QLinearConcat", "QLinearAdd"}
    model = load(path, manifest)
    assert _route(model) == ("white-box", "straight-through surrogate", "QOperator")


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(
    "op",
    [
        "Conv",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Concat",
        "LeakyRelu",
        "Sigmoid",
        "AveragePool",
        "GlobalAveragePool",
    ],
)
def test_each_quantized_operator_is_rewritten_exactly(
    tmp_path: Path, op: str, per_channel: bool
) -> None:
    """On inputs the network's quantization represents exactly, the shadow of each quantized
    operator differs from onnxruntime's by its output's rounding alone: at most half a
    quantization step (a wrong scale, zero point or layout is many steps off). The global
    pool follows a leaky ReLU (the quantizer quantizes it only after a quantized output),
    whose rounding, averaged, adds at most half of its own step."""
    source = tmp_path / "float.onnx"
    onnx.save(single_op_model(op), str(source))
    inputs = [v.name for v in onnx.load(str(source)).graph.input]
    rng = np.random.default_rng(3)
    shape = (1, 8) if op == "Gemm" else (1, 2, 8, 8)

    def draw() -> dict[str, np.ndarray]:
        return {name: rng.standard_normal(shape).astype(np.float32) for name in inputs}

    path = quantize(
        source,
        tmp_path / "q.onnx",
        [draw() for _ in range(4)],
        form="QOperator",
        per_channel=per_channel,
    )
    proto = onnx.load(str(path))
    assert f"QLinear{op}" in {n.op_type for n in proto.graph.node} or op == "Gemm"
    assert op != "Gemm" or "QGemm" in {n.op_type for n in proto.graph.node}
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    feed = draw()
    for node in proto.graph.node:  # each input moved onto its quantization grid
        if node.op_type == "QuantizeLinear" and node.input[0] in feed:
            scale, zero = values[node.input[1]], values[node.input[2]].astype(np.float32)
            q = np.clip(np.round(feed[node.input[0]] / scale) + zero, -128, 127)
            feed[node.input[0]] = ((q - zero) * scale).astype(np.float32)
    last = next(n for n in reversed(proto.graph.node) if n.op_type == "DequantizeLinear")
    step = float(values[last.input[1]])
    if op == "GlobalAveragePool":
        leaky = next(n for n in proto.graph.node if n.op_type == "QLinearLeakyRelu")
        step += float(values[leaky.input[3]])
    real = OrtNetwork(proto)(*(torch.from_numpy(feed[n]) for n in inputs))
    shadow = OrtNetwork(float_shadow(proto))(*(torch.from_numpy(feed[n]) for n in inputs))
    assert float((real - shadow).abs().max()) <= 0.5 * step * (1 + 1e-3)
    assert float(real.abs().max()) > 10 * step
