"""Quantized and float16 ONNX graphs: which operators intake accepts, the checks of their
quantization parameters, and their float32 *shadow*, the graph the straight-through surrogate
differentiates (:mod:`reconstruction.models.surrogate`).

Forms taken in (each as onnxruntime's own quantization tools write it):

- **QDQ** (``quantize_static(..., quant_format=QDQ)``): ``QuantizeLinear`` / ``DequantizeLinear``
  around float operators, integer weights behind a ``DequantizeLinear``;
- **QOperator** (``quant_format=QOperator``): ``QLinearConv``, ``QLinearMatMul`` and the
  ``com.microsoft`` quantized operators onnxruntime implements natively
  (:data:`QUANTIZATION_CONTRIB_OPS`);
- **dynamic** (``quantize_dynamic``): ``DynamicQuantizeLinear`` with ``ConvInteger`` /
  ``MatMulInteger`` and the float rescaling after them;
- **float16**: float16 weights and tensors, usually with a ``Cast`` at the inputs and outputs.

The shadow is the same graph in float32 with rounding taken out: every tensor that was integer
holds its value in the integer domain unrounded (``x / s + z``, clipped to the type's range),
integer operators run in float (``ConvInteger`` is a ``Conv`` of the zero-point-shifted
operands), and float16 tensors are float32. A ``QuantizeLinear`` followed by a
``DequantizeLinear`` of the same parameters is therefore the identity within its clipping range
``[s (qmin - z), s (qmax - z)]`` (a ``Clip``), the straight-through estimator of BPDA (Athalye,
Carlini and Wagner, ICML 2018); dequantized integer weights become float initializers holding
exactly the dequantized values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from reconstruction.models.formats import ModelError

__all__ = [
    "CONTRIB_DOMAIN",
    "QUANTIZATION_CONTRIB_OPS",
    "QUANTIZATION_OPS",
    "ShadowError",
    "check_scales",
    "float_shadow",
    "reduced_precision",
]

#: the domain of onnxruntime's built-in contrib operators
CONTRIB_DOMAIN = "com.microsoft"
#: the ``com.microsoft`` operators accepted: the quantized operators onnxruntime's quantization
#: tools emit in the QOperator format (and its contrib Q/DQ), which onnxruntime implements
#: natively and the shadow rewrites; no other contrib operator, and never a custom-op library
QUANTIZATION_CONTRIB_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
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
#: default-domain operators that make a graph quantized
QUANTIZATION_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
_DYNAMIC = frozenset({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})
_QOPERATOR = frozenset({"QLinearConv", "QLinearMatMul"})
_HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
#: integer types a quantized tensor may have, with their ranges
_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.INT32: (-(2**31), 2**31 - 1),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT4: (-8, 7),
}
_LIFTABLE = frozenset({*_RANGES, *_HALF})
#: the positions of the scale inputs of each quantized operator (QLinearConcat: see
#: :func:`_scale_positions`)
_SCALES: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1,),
    "DequantizeLinear": (1,),
    "QLinearConv": (1, 4, 6),
    "QLinearMatMul": (1, 4, 6),
    "QLinearAdd": (1, 4, 6),
    "QLinearMul": (1, 4, 6),
    "QLinearLeakyRelu": (1, 3),
    "QLinearSigmoid": (1, 3),
    "QLinearAveragePool": (1, 3),
    "QLinearGlobalAveragePool": (1, 3),
    "QGemm": (1, 4, 7),
}


class ShadowError(ValueError):
    """A quantized graph this module cannot give a float shadow (the surrogate is refused)."""


def _is_quantized(node: NodeProto) -> bool:
    if node.domain == CONTRIB_DOMAIN:
        return node.op_type in QUANTIZATION_CONTRIB_OPS
    return node.domain in ("", "ai.onnx") and node.op_type in QUANTIZATION_OPS


def reduced_precision(model: ModelProto) -> list[str]:
    """The reduced-precision forms the graph uses (``QDQ``, ``QOperator``, ``dynamic``,
    ``float16``); empty for a float32 graph."""
    forms: set[str] = set()
    graph = model.graph
    for node in graph.node:
        if node.domain == CONTRIB_DOMAIN or node.op_type in _QOPERATOR:
            forms.add("QOperator")
        elif node.op_type in _DYNAMIC:
            forms.add("dynamic")
        elif _is_quantized(node):
            forms.add("QDQ")
        if node.op_type == "Cast" and helper.get_node_attr_value(node, "to") in _HALF:
            forms.add("float16")
    if any(t.data_type in _HALF for t in graph.initializer):
        forms.add("float16")
    if "QOperator" in forms:
        forms.discard("QDQ")  # the QOperator format quantizes and dequantizes at its borders
    return sorted(forms)


def _constants(model: ModelProto) -> dict[str, np.ndarray]:
    """Every initializer and ``Constant`` node output of the main graph, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _scale_positions(node: NodeProto) -> Iterable[int]:
    if node.op_type == "QLinearConcat":
        return [0, *range(3, len(node.input), 3)]
    return _SCALES.get(node.op_type, ())


def check_scales(model: ModelProto) -> None:
    """:class:`ModelError` naming the node when a constant quantization scale is zero,
    negative or not finite (scales computed in the graph, as dynamic quantization's, are not
    constants and are not checked here)."""
    values = _constants(model)
    for node in model.graph.node:
        if not _is_quantized(node):
            continue
        for position in _scale_positions(node):
            if position >= len(node.input) or node.input[position] not in values:
                continue
            name = node.input[position]
            scale = values[name].astype(np.float64)
            if scale.size == 0 or not (np.isfinite(scale).all() and (scale > 0).all()):
                bad = scale[~(np.isfinite(scale) & (scale > 0))] if scale.size else scale
                shown = bad.flat[0] if bad.size else "empty"
                raise ModelError(
                    f"node {node.name or node.op_type!r} ({node.op_type}): quantization scale "
                    f"{name!r} is {shown}: scales must be positive and finite"
                )


def _range(dtype: int, where: str) -> tuple[int, int]:
    if dtype not in _RANGES:
        raise ShadowError(f"{where}: quantized type {TensorProto.DataType.Name(dtype)}")
    return _RANGES[dtype]


@dataclass
class _Shadow:
    """Builds the shadow of one graph (see the module's docstring)."""

    values: dict[str, np.ndarray]
    types: dict[str, int]
    ranks: dict[str, int]
    nodes: list[NodeProto] = field(default_factory=list)
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    #: tensors whose shadow is float32 while the network's is integer or float16
    lifted: set[str] = field(default_factory=set)
    #: a tensor's shadow is another tensor (a removed Cast)
    alias: dict[str, str] = field(default_factory=dict)
    #: shadow outputs of QuantizeLinear: input shadow, scale, zero point, axis, type range
    quantized: dict[str, tuple[str, np.ndarray, np.ndarray, int, tuple[int, int]]] = field(
        default_factory=dict
    )
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__shadow{self.counter}"

    def const(self, value: np.ndarray | float, base: str = "c") -> str:
        array = np.asarray(value, dtype=np.float32)
        name = self.fresh(base)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def emit(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def name(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def constant(self, tensor: str, where: str) -> np.ndarray:
        if tensor not in self.values:
            raise ShadowError(f"{where}: {tensor!r} is not a constant")
        return self.values[tensor]

    def optional(self, node: NodeProto, position: int) -> str | None:
        if position < len(node.input) and node.input[position]:
            return str(node.input[position])
        return None

    def data(self, tensor: str) -> str:
        """The float32 shadow of ``tensor`` (a constant becomes a float initializer, a tensor
        of another type is cast)."""
        tensor = self.name(tensor)
        if tensor in self.lifted or self.types.get(tensor) == TensorProto.FLOAT:
            return tensor
        if tensor in self.values:
            return self.const(self.values[tensor], tensor)
        return self.emit("Cast", [tensor], tensor, to=TensorProto.FLOAT)

    def zero(self, node: NodeProto, position: int, default_type: int) -> tuple[np.ndarray, int]:
        """A zero point's value and its type (absent: 0 of ``default_type``)."""
        tensor = self.optional(node, position)
        if tensor is None:
            return np.zeros((), np.float32), default_type
        value = self.constant(tensor, f"node {node.name or node.op_type!r}")
        return value.astype(np.float32), int(helper.np_dtype_to_tensor_dtype(value.dtype))

    def axis_shape(self, value: np.ndarray, axis: int, rank: int | None, where: str) -> np.ndarray:
        """A per-axis parameter reshaped to broadcast along ``axis`` of a ``rank``-D tensor."""
        if value.size == 1:
            return value.reshape(())
        if rank is None:
            raise ShadowError(f"{where}: per-axis parameters on a tensor of unknown rank")
        axis = axis % rank
        return value.reshape([1] * axis + [-1] + [1] * (rank - axis - 1))

    def clip(self, x: str, lo: np.ndarray, hi: np.ndarray, out: str | None = None) -> str:
        if lo.size == 1 and hi.size == 1:
            inputs = [x, self.const(lo.reshape(()), "lo"), self.const(hi.reshape(()), "hi")]
            if out is None:
                return self.emit("Clip", inputs, "clip")
            self.nodes.append(helper.make_node("Clip", inputs, [out]))
            return out
        low = self.emit("Min", [x, self.const(hi, "hi")], "min")
        if out is None:
            return self.emit("Max", [low, self.const(lo, "lo")], "max")
        self.nodes.append(helper.make_node("Max", [low, self.const(lo, "lo")], [out]))
        return out

    def requantize(
        self, real: str, scale: np.ndarray, zero: np.ndarray, dtype: int, where: str, out: str
    ) -> None:
        """``clip(real / scale + zero)`` into ``out`` (a lifted tensor)."""
        qmin, qmax = _range(dtype, where)
        shifted = self.emit(
            "Add", [self.emit("Div", [real, self.const(scale)], out), self.const(zero)], out
        )
        self.clip(shifted, np.array(qmin, np.float32), np.array(qmax, np.float32), out)
        self.lifted.add(out)

    def dequantize(self, tensor: str, scale: np.ndarray, zero: np.ndarray) -> str:
        """``(q - zero) * scale`` (folded when ``q`` is a constant)."""
        tensor = self.name(tensor)
        if tensor in self.values and tensor not in self.lifted:
            value = (self.values[tensor].astype(np.int64) - zero).astype(np.float32)
            return self.const(value * scale.astype(np.float32), tensor)
        shifted = self.emit("Sub", [self.data(tensor), self.const(zero)], tensor)
        return self.emit("Mul", [shifted, self.const(scale)], tensor)

    def shifted(self, tensor: str, zero: np.ndarray) -> str:
        """``q - zero`` in float (folded when ``q`` is a constant)."""
        tensor = self.name(tensor)
        if tensor in self.values and tensor not in self.lifted:
            return self.const(self.values[tensor].astype(np.float64) - zero, tensor)
        if not zero.any():
            return self.data(tensor)
        return self.emit("Sub", [self.data(tensor), self.const(zero)], tensor)

    # -- the operators --------------------------------------------------------------------

    def quantize_linear(self, node: NodeProto, where: str) -> None:
        x, out = node.input[0], node.output[0]
        scale = self.constant(node.input[1], where).astype(np.float32)
        output_dtype = (
            helper.get_node_attr_value(node, "output_dtype")
            if any(a.name == "output_dtype" for a in node.attribute)
            else 0
        )
        zero, dtype = self.zero(node, 2, output_dtype or TensorProto.UINT8)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            raise ShadowError(f"{where}: blocked quantization")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = self.ranks.get(x)
        scale = self.axis_shape(scale, axis, rank, where)
        zero = self.axis_shape(zero, axis, rank, where)
        qrange = _range(dtype, where)
        source = self.data(x)
        self.requantize(source, scale, zero, dtype, where, out)
        self.quantized[out] = (source, scale, zero, axis, qrange)

    def dequantize_linear(self, node: NodeProto, where: str) -> None:
        q, out = self.name(node.input[0]), node.output[0]
        scale = self.constant(node.input[1], where).astype(np.float32)
        zero, _ = self.zero(node, 2, TensorProto.UINT8)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            raise ShadowError(f"{where}: blocked quantization")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = self.ranks.get(q, self.values[q].ndim if q in self.values else None)
        scale = self.axis_shape(scale, axis, rank, where)
        zero = self.axis_shape(zero, axis, rank, where)
        pair = self.quantized.get(q)
        if (
            pair is not None
            and pair[1].shape == scale.shape
            and np.array_equal(pair[1], scale)
            and np.array_equal(pair[2], zero)
        ):
            # Q then DQ with the same parameters: the identity within the clipping range
            source, _, _, _, (qmin, qmax) = pair
            self.clip(source, scale * (qmin - zero), scale * (qmax - zero), out)
        else:
            self.alias[out] = self.dequantize(q, scale, zero)
        if self.types.get(out) in _HALF:
            self.lifted.add(out)

    def dynamic_quantize_linear(self, node: NodeProto) -> None:
        x = self.data(node.input[0])
        y, y_scale, y_zero = node.output[0], node.output[1], node.output[2]
        low = self.emit("Min", [self.emit("ReduceMin", [x], x, keepdims=0), self.const(0.0)], x)
        high = self.emit("Max", [self.emit("ReduceMax", [x], x, keepdims=0), self.const(0.0)], x)
        spread = self.emit("Div", [self.emit("Sub", [high, low], x), self.const(255.0)], x)
        tiny = self.const(float(np.finfo(np.float32).tiny))
        self.nodes.append(helper.make_node("Max", [spread, tiny], [y_scale]))
        rounded = self.emit(
            "Round", [self.emit("Div", [self.emit("Neg", [low], x), y_scale], x)], x
        )
        self.clip(rounded, np.array(0.0, np.float32), np.array(255.0, np.float32), y_zero)
        shifted = self.emit("Add", [self.emit("Div", [x, y_scale], x), y_zero], x)
        self.clip(shifted, np.array(0.0, np.float32), np.array(255.0, np.float32), y)
        self.lifted.update({y, y_zero})

    def integer_op(self, node: NodeProto, where: str) -> None:
        """``ConvInteger`` / ``MatMulInteger``: the float op on the zero-point-shifted
        operands (the accumulator, unrounded)."""
        a, b = node.input[0], node.input[1]
        operands = []
        for tensor, position in ((a, 2), (b, 3)):
            zero_name = self.optional(node, position)
            if zero_name is None:
                operands.append(self.data(tensor))
                continue
            tensor = self.name(tensor)
            if zero_name in self.values:
                zero = self.values[zero_name].astype(np.float32)
                if zero.size > 1:
                    if node.op_type == "ConvInteger":
                        # per output channel: the weight's first axis
                        zero = zero.reshape([-1] + [1] * (self.constant(b, where).ndim - 1))
                    elif position == 2:
                        zero = zero.reshape(-1, 1)
                operands.append(self.shifted(tensor, zero))
            else:
                operands.append(self.emit("Sub", [self.data(tensor), self.data(zero_name)], tensor))
        op = "Conv" if node.op_type == "ConvInteger" else "MatMul"
        self.nodes.append(helper.make_node(op, operands, [node.output[0]], **_attrs(node)))
        self.lifted.add(node.output[0])

    def qlinear_conv(self, node: NodeProto, where: str, matmul: bool) -> None:
        """``QLinearConv`` / ``QLinearMatMul``: the float op on the shifted operands, scaled
        to the output's quantization."""
        i = node.input
        x_scale = self.constant(i[1], where).astype(np.float32)
        x_zero, _ = self.zero(node, 2, TensorProto.UINT8)
        w_scale = self.constant(i[4], where).astype(np.float32)
        w_zero, _ = self.zero(node, 5, TensorProto.INT8)
        y_scale = self.constant(i[6], where).astype(np.float32)
        y_zero, y_type = self.zero(node, 7, TensorProto.UINT8)
        if x_scale.size > 1 or x_zero.size > 1:
            raise ShadowError(f"{where}: per-row input quantization")
        if matmul:
            factor = (x_scale * w_scale) / y_scale  # per column: the last axis
            w_shifted = self.shifted(i[3], w_zero)
        else:
            rank = self.constant(i[3], where).ndim  # the output's rank too
            per_channel = [1, -1] + [1] * (rank - 2)
            factor = (x_scale * w_scale / y_scale).reshape(per_channel if w_scale.size > 1 else ())
            w_zero = w_zero.reshape([-1] + [1] * (rank - 1) if w_zero.size > 1 else ())
            w_shifted = self.shifted(i[3], w_zero)
        inputs = [self.shifted(i[0], x_zero), w_shifted]
        bias = self.optional(node, 8)
        if bias is not None and not matmul:
            inputs.append(self.data(bias))
        op = "MatMul" if matmul else "Conv"
        acc = self.emit(op, inputs, node.output[0], **_attrs(node))
        real = self.emit("Mul", [acc, self.const(factor)], node.output[0])
        self.requantize(real, np.ones((), np.float32), y_zero, y_type, where, node.output[0])

    def contrib(self, node: NodeProto, where: str) -> None:
        """The ``com.microsoft`` quantized operators: dequantize, run the float op, requantize."""
        op, i, out = node.op_type, node.input, node.output[0]

        def params(position: int) -> tuple[np.ndarray, np.ndarray, int]:
            scale = self.constant(i[position], where).astype(np.float32)
            zero, dtype = self.zero(node, position + 1, TensorProto.UINT8)
            if scale.size > 1:
                raise ShadowError(f"{where}: per-axis parameters")
            return scale, zero, dtype

        if op in ("QuantizeLinear", "DequantizeLinear"):
            if op == "QuantizeLinear":
                self.quantize_linear(node, where)
            else:
                self.dequantize_linear(node, where)
            return
        if op == "QLinearConcat":
            y_scale, y_zero, y_type = params(0)
            parts = []
            for k in range(2, len(i), 3):
                scale, zero, _ = params(k + 1)
                real = self.dequantize(i[k], scale, zero)
                part = self.fresh(out)
                self.requantize(real, y_scale, y_zero, y_type, where, part)
                parts.append(part)
            self.nodes.append(helper.make_node("Concat", parts, [out], **_attrs(node)))
            self.lifted.add(out)
            return
        if op == "QGemm":
            self.qgemm(node, where)
            return
        a_scale, a_zero, a_type = params(1)
        a = self.dequantize(i[0], a_scale, a_zero)
        if op in ("QLinearAdd", "QLinearMul"):
            b_scale, b_zero, _ = params(4)
            b = self.dequantize(i[3], b_scale, b_zero)
            real = self.emit("Add" if op == "QLinearAdd" else "Mul", [a, b], out)
            c_scale = self.constant(i[6], where).astype(np.float32)
            c_zero, c_type = self.zero(node, 7, a_type)
            self.requantize(real, c_scale, c_zero, c_type, where, out)
            return
        attrs = _attrs(node)
        if attrs.pop("channels_last", 0):
            raise ShadowError(f"{where}: channels_last")
        float_op = op.removeprefix("QLinear")
        real = self.emit(float_op, [a], out, **attrs)
        y_scale = self.constant(i[3], where).astype(np.float32)
        y_zero, y_type = self.zero(node, 4, a_type)
        self.requantize(real, y_scale, y_zero, y_type, where, out)

    def qgemm(self, node: NodeProto, where: str) -> None:
        """``QGemm``: ``alpha (A - za)(B - zb) + C`` in the accumulator (``C``: int32 at scale
        ``sa sb``), times ``sa sb``; requantized when it has an output scale."""
        i, out = node.input, node.output[0]
        attrs = _attrs(node)
        a_scale = self.constant(i[1], where).astype(np.float32)
        a_zero, _ = self.zero(node, 2, TensorProto.UINT8)
        b_scale = self.constant(i[4], where).astype(np.float32)
        b_zero, _ = self.zero(node, 5, TensorProto.INT8)
        if a_scale.size > 1:
            raise ShadowError(f"{where}: per-row input quantization")
        trans_b = int(attrs.get("transB", 0))
        b_zero_shape = b_zero.reshape(-1, 1) if trans_b and b_zero.size > 1 else b_zero
        inputs = [self.shifted(i[0], a_zero), self.shifted(i[3], b_zero_shape)]
        bias = self.optional(node, 6)
        if bias is not None:
            inputs.append(self.data(bias))
        alpha = float(attrs.pop("alpha", 1.0))
        acc = self.emit("Gemm", inputs, out, **attrs)
        factor = alpha * a_scale * b_scale.reshape(-1)
        if self.optional(node, 7) is None:
            self.nodes.append(helper.make_node("Mul", [acc, self.const(factor)], [out]))
            return
        y_scale = self.constant(i[7], where).astype(np.float32)
        y_zero, y_type = self.zero(node, 8, TensorProto.UINT8)
        real = self.emit("Mul", [acc, self.const(factor / y_scale)], out)
        self.requantize(real, np.ones((), np.float32), y_zero, y_type, where, out)

    def generic(self, node: NodeProto, where: str) -> None:
        """Any other operator: on float32 shadows where its inputs were lifted (constants of
        the lifted inputs' type are lifted with them)."""
        inputs = [self.name(t) if t else t for t in node.input]
        lifted_types = {
            self.types.get(original)
            for original, t in zip(node.input, inputs, strict=True)
            if t in self.lifted
        }
        if node.op_type == "Cast":
            to = helper.get_node_attr_value(node, "to")
            source = inputs[0]
            if source in self.lifted and to in (TensorProto.FLOAT, *_HALF):
                self.alias[node.output[0]] = source
                if to in _HALF:
                    self.lifted.add(node.output[0])
                return
            if to in _HALF:
                self.alias[node.output[0]] = self.data(source)
                self.lifted.add(node.output[0])
                return
            if source in self.lifted:
                raise ShadowError(f"{where}: a cast of a quantized tensor to an integer type")
        if node.op_type == "Constant" and self.types.get(node.output[0]) in _HALF:
            self.alias[node.output[0]] = self.const(self.values[node.output[0]], node.output[0])
            self.lifted.add(node.output[0])
            return
        if node.op_type == "ConstantOfShape" and any(
            a.name == "value" and a.t.data_type in _LIFTABLE for a in node.attribute
        ):
            value = numpy_helper.to_array(node.attribute[0].t).astype(np.float32)
            node = helper.make_node(
                "ConstantOfShape",
                inputs,
                list(node.output),
                value=numpy_helper.from_array(value),
            )
            self.nodes.append(node)
            self.lifted.update(o for o in node.output if self.types.get(o) in _LIFTABLE)
            return
        if lifted_types:
            inputs = [
                self.data(t)
                if t
                and (t in self.lifted or (t in self.values and self.types.get(o) in lifted_types))
                else t
                for o, t in zip(node.input, inputs, strict=True)
            ]
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        self.nodes.append(copy)
        if lifted_types:
            self.lifted.update(o for o in node.output if self.types.get(o) in _LIFTABLE)


def _attrs(node: NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _has_subgraphs(node: NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _used(nodes: list[NodeProto], outputs: Iterable[str]) -> Iterator[NodeProto]:
    """The nodes the outputs depend on, in their order."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    return reversed(keep)


def float_shadow(model: ModelProto) -> ModelProto:
    """The float32 shadow of a quantized or float16 graph (see the module's docstring);
    :class:`ShadowError` when a part of it has none."""
    graph = model.graph
    if any(_has_subgraphs(n) for n in graph.node):
        raise ShadowError("control flow (If, Loop, Scan) in a quantized graph")
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in infos}
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in infos
        if v.type.tensor_type.HasField("shape")
    }
    values = _constants(model)
    for init in graph.initializer:
        types[init.name] = init.data_type
        ranks[init.name] = len(init.dims)
    shadow = _Shadow(values, types, ranks)
    for init in graph.initializer:
        if init.data_type in _HALF:
            shadow.initializers[init.name] = numpy_helper.from_array(
                values[init.name].astype(np.float32), init.name
            )
            shadow.lifted.add(init.name)
        else:
            shadow.initializers[init.name] = init
    for node in graph.node:
        where = f"node {node.name or node.op_type!r} ({node.domain or 'ai.onnx'}::{node.op_type})"
        if node.domain == CONTRIB_DOMAIN:
            shadow.contrib(node, where)
        elif node.op_type == "QuantizeLinear":
            shadow.quantize_linear(node, where)
        elif node.op_type == "DequantizeLinear":
            shadow.dequantize_linear(node, where)
        elif node.op_type == "DynamicQuantizeLinear":
            shadow.dynamic_quantize_linear(node)
        elif node.op_type in ("ConvInteger", "MatMulInteger"):
            shadow.integer_op(node, where)
        elif node.op_type in _QOPERATOR:
            shadow.qlinear_conv(node, where, matmul=node.op_type == "QLinearMatMul")
        else:
            shadow.generic(node, where)
    inputs = []
    for value in graph.input:
        if value.name in shadow.initializers:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        if copy.type.tensor_type.elem_type in _HALF:
            copy.type.tensor_type.elem_type = TensorProto.FLOAT
        inputs.append(copy)
    outputs = []
    for value in graph.output:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        if copy.type.tensor_type.elem_type in _LIFTABLE:
            copy.type.tensor_type.elem_type = TensorProto.FLOAT
        source = shadow.name(value.name)
        if source != value.name:
            shadow.nodes.append(helper.make_node("Identity", [source], [value.name]))
        outputs.append(copy)
    nodes = list(_used(shadow.nodes, [o.name for o in outputs]))
    used = {t for n in nodes for t in n.input}
    initializers = [t for name, t in shadow.initializers.items() if name in used]
    rebuilt = helper.make_graph(nodes, f"{graph.name}-float-shadow", inputs, outputs, initializers)
    default = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    result = helper.make_model(rebuilt, opset_imports=default)
    result.ir_version = model.ir_version
    try:
        onnx.checker.check_model(result, full_check=True)
    except Exception as exc:
        raise ShadowError(f"the float shadow fails the ONNX checker: {exc}"[:500]) from exc
    return result
