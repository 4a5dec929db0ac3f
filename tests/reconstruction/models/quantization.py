"""Reduced-precision networks as vendors ship them: onnxruntime's own quantization tools
(``quantize_static`` in the QDQ and QOperator formats, ``quantize_dynamic``) and a float16
conversion written here, of small graphs built in the test and of ``examples/unet-mri``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.reconstruction.models.conftest import SIZE

#: the quantized operators of onnxruntime's QOperator format that :func:`every_op_model`
#: makes it write
QOPERATOR_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QGemm",
    }
)


def every_op_model(channels: int = 4) -> onnx.ModelProto:
    """A 2-channel ``[B, 2, SIZE, SIZE]`` to ``[B, 2, SIZE, SIZE]`` float network whose
    static quantization uses every operator of :data:`QOPERATOR_OPS`: convolutions, a leaky
    ReLU, a matrix product along the last axis, an average pool, a squeeze-excite branch
    (global pool, Gemm, sigmoid, product), a sum, a concatenation."""
    rng = np.random.default_rng(1)

    def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (scale * rng.standard_normal(shape)).astype(np.float32), name
        )

    c = channels
    initializers = [
        weight("w1", c, 2, 3, 3),
        weight("b1", c, scale=0.05),
        weight("w2", c, c, 3, 3, scale=0.2),
        weight("b2", c, scale=0.05),
        weight("m", SIZE, SIZE, scale=1 / np.sqrt(SIZE)),
        weight("g", c, c),
        weight("gb", c, scale=0.05),
        weight("w3", 2, 2 * c, 1, 1, scale=0.2),
        weight("b3", 2, scale=0.05),
        numpy_helper.from_array(np.array([-1, c], np.int64), "flat"),
        numpy_helper.from_array(np.array([-1, c, 1, 1], np.int64), "excite"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["r1"], alpha=0.1),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["c2", "m"], ["mm"]),
        helper.make_node(
            "AveragePool", ["mm"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]
        ),
        helper.make_node("GlobalAveragePool", ["ap"], ["gp"]),
        helper.make_node("Reshape", ["gp", "flat"], ["gf"]),
        helper.make_node("Gemm", ["gf", "g", "gb"], ["gg"], transB=1),
        helper.make_node("Sigmoid", ["gg"], ["gs"]),
        helper.make_node("Reshape", ["gs", "excite"], ["ge"]),
        helper.make_node("Mul", ["ap", "ge"], ["se"]),
        helper.make_node("Add", ["se", "r1"], ["sum"]),
        helper.make_node("Concat", ["sum", "c2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "every-op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, SIZE, SIZE])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def single_op_model(op: str) -> onnx.ModelProto:
    """One float operator whose static QOperator quantization is the quantized operator of
    :data:`QOPERATOR_OPS` named after it (inputs ``a`` and, for the binary ones, ``b``)."""
    rng = np.random.default_rng(2)
    shape = [1, 8] if op == "Gemm" else [1, 2, 8, 8]
    inputs = ["a", "b"] if op in ("Add", "Mul", "Concat") else ["a"]
    initializers = []
    attrs: dict[str, Any] = {}
    if op == "Conv":
        initializers = [rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)]
        attrs = {"pads": [1, 1, 1, 1]}
    elif op == "MatMul":
        initializers = [rng.standard_normal((8, 8))]
    elif op == "Gemm":
        initializers = [rng.standard_normal((4, 8)), rng.standard_normal(4)]
        attrs = {"transB": 1}
    elif op == "LeakyRelu":
        attrs = {"alpha": 0.2}
    elif op == "AveragePool":
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    elif op == "Concat":
        attrs = {"axis": 1}
    names = [f"w{k}" for k in range(len(initializers))]
    nodes = [helper.make_node(op, [*inputs, *names], ["y"], **attrs)]
    if op == "GlobalAveragePool":  # quantized only after a quantized operator's output
        nodes = [
            helper.make_node("LeakyRelu", ["a"], ["r"], alpha=0.2),
            helper.make_node(op, ["r"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array((0.3 * w).astype(np.float32), n)
            for w, n in zip(initializers, names, strict=True)
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def quantize(
    source: Path,
    target: Path,
    calibration: np.ndarray | list[dict[str, np.ndarray]],
    *,
    form: str = "QDQ",
    per_channel: bool = False,
    preprocess: bool = False,
) -> Path:
    """``source`` quantized by onnxruntime to int8 weights (``form``: ``QDQ`` or
    ``QOperator`` with int8 activations calibrated on ``calibration``, ``[N, ...]`` images of
    the first input or a list of feeds; ``dynamic``: ``quantize_dynamic``). ``preprocess``:
    first through onnxruntime's ``quant_pre_process`` (the step its quantizer recommends,
    which imports nine operator domains no node uses)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if preprocess:
        prepared = target.with_name(f"{target.stem}-prepared.onnx")
        quant_pre_process(str(source), str(prepared))
        source = prepared
    if form == "dynamic":
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return target
    name = onnx.load(str(source)).graph.input[0].name
    if isinstance(calibration, np.ndarray):
        calibration = [{name: image[None]} for image in calibration.astype(np.float32)]
    feeds = calibration

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ if form == "QDQ" else QuantFormat.QOperator,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )
    return target


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 graph: every float initializer in float16, a ``Cast`` to
    float16 after each input and back to float32 before each output (the interface stays
    float32, as the manifest describes it)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, init.name))
    renamed = {v.name: f"{v.name}_half" for v in [*graph.input, *graph.output]}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
    casts_in = [
        helper.make_node("Cast", [v.name], [renamed[v.name]], to=TensorProto.FLOAT16)
        for v in graph.input
    ]
    casts_out = [
        helper.make_node("Cast", [renamed[v.name]], [v.name], to=TensorProto.FLOAT)
        for v in graph.output
    ]
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return half
