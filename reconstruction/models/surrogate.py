"""The straight-through surrogate of a quantized or float16 network (BPDA: Athalye, Carlini and
Wagner, ICML 2018).

Exact autograd through a graph that rounds is zero almost everywhere, so the search would have
no gradient. :class:`StraightThrough` runs the real network as onnxruntime runs it in the
forward pass (its outputs are the ones judged and printed: every perturbation found is
evaluated on the real network) and, in the backward pass, the vector-Jacobian product of the
graph's float32 shadow (:func:`~reconstruction.models.quantized.float_shadow`) at the same
input. The shadow is converted to torch by the same routes as a float graph, checked against
onnxruntime running the shadow, and accepted only when it is within
:data:`SURROGATE_TOLERANCE` of the real network on the validation probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import ModelProto, TensorProto, helper
from torch import Tensor

from reconstruction.models.formats import ModelError
from reconstruction.models.onnx_model import (
    PARITY_TOLERANCE,
    OrtNetwork,
    convert_to_torch,
    relative_difference,
)
from reconstruction.models.quantized import ShadowError, float_shadow

__all__ = [
    "SURROGATE_TOLERANCE",
    "StraightThrough",
    "Surrogate",
    "build_surrogate",
    "check_overflow",
]

#: the largest relative difference (max abs difference over the real output's max abs value)
#: between the float shadow and the real network that still makes the shadow's gradient the
#: network's: rounding alone moves the int8 U-Net of ``examples/unet-mri`` by 0.5-0.8 % (its
#: QDQ, QOperator and dynamic quantizations), a shadow 5 % away describes another network
SURROGATE_TOLERANCE = 0.05


class _ThroughShadow(torch.autograd.Function):
    """Forward: the real network's output. Backward: the shadow's vector-Jacobian product at
    the same input, for the first input only (the extras are not differentiated)."""

    @staticmethod
    def forward(
        ctx: Any, real: OrtNetwork, shadow: torch.nn.Module, x: Tensor, *extras: Tensor
    ) -> Tensor:
        ctx.shadow = shadow
        ctx.save_for_backward(x, *extras)
        return real(x, *extras)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, *extras = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            out = ctx.shadow(leaf, *extras)
            (gx,) = torch.autograd.grad(out, leaf, grad.to(out.dtype))
        return (None, None, gx, *(None for _ in extras))


class StraightThrough(torch.nn.Module):
    """The real network (onnxruntime) forward, the float shadow's gradient backward; batches
    as onnxruntime does (the adapter splits batches for fixed-batch graphs)."""

    def __init__(self, real: OrtNetwork, shadow: torch.nn.Module) -> None:
        super().__init__()
        self._real = real  # not a module: onnxruntime
        self.shadow = shadow

    def forward(self, x: Tensor, *extras: Tensor) -> Tensor:
        out: Tensor = _ThroughShadow.apply(self._real, self.shadow, x, *extras)
        return out


@dataclass
class Surrogate:
    """The outcome: the module when the shadow was built, converted and close enough, and what
    was measured on the way (``problem``: why not, when not)."""

    module: StraightThrough | None = None
    route: str | None = None
    #: the shadow (in torch) against the real network on the probes
    max_relative_difference: float | None = None
    #: the torch conversion of the shadow against onnxruntime running the shadow
    conversion_difference: float | None = None
    problem: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def parity(self, tolerance: float, conversion_tolerance: float) -> dict[str, Any]:
        """The summary's ``parity`` of a surrogate."""
        return {
            "route": self.route,
            "of": "the float32 shadow against the network as onnxruntime runs it",
            "max_relative_difference": self.max_relative_difference,
            "tolerance": tolerance,
            "shadow_conversion": {
                "max_relative_difference": self.conversion_difference,
                "tolerance": conversion_tolerance,
            },
            "attempts": self.attempts,
        }


def build_surrogate(
    model: ModelProto,
    real: OrtNetwork,
    probes: list[list[Tensor]],
    *,
    tol: float = SURROGATE_TOLERANCE,
    conversion_tol: float = PARITY_TOLERANCE,
) -> Surrogate:
    """The straight-through surrogate of ``model`` (a checked quantized or float16 graph),
    or, in ``problem``, why it has none: the shadow cannot be built, no conversion of it
    matches onnxruntime, or it is further than ``tol`` from the real network."""
    result = Surrogate()
    try:
        shadow = float_shadow(model)
    except ShadowError as exc:
        result.problem = f"no float shadow: {exc}"
        return result
    try:
        shadow_ort = OrtNetwork(shadow, _device(probes))
    except ModelError as exc:
        result.problem = f"onnxruntime cannot run the float shadow: {exc}"
        return result
    conversion = convert_to_torch(shadow, shadow_ort, probes, tol=conversion_tol)
    result.attempts = conversion.attempts
    if conversion.module is None:
        result.problem = "no torch conversion of the float shadow matched onnxruntime"
        return result
    result.route = conversion.route
    result.conversion_difference = conversion.max_relative_difference
    shadow_module = conversion.module
    with torch.no_grad():
        worst = max(relative_difference(shadow_module(*p), real(*p)) for p in probes)
    result.max_relative_difference = worst
    if not worst <= tol:
        result.problem = (
            f"the float shadow differs from the network by {worst:.3g} of its output's largest "
            f"value on the validation probes (tolerance {tol:g}): its gradient would not be "
            "the network's"
        )
        return result
    result.module = StraightThrough(real, shadow_module).eval()
    return result


def _device(probes: list[list[Tensor]]) -> str:
    return str(probes[0][0].device)


def check_overflow(model: ModelProto, real: OrtNetwork, probe: list[Tensor]) -> None:
    """:class:`ModelError` when a float16 network's output is not finite on the validation
    input, naming the first node whose float16 output overflows."""
    with torch.no_grad():
        out = real(*probe)
    if bool(torch.isfinite(out).all()):
        return
    culprit = _first_overflow(model, real, probe)
    where = f", first at node {culprit}" if culprit else ""
    raise ModelError(
        f"the float16 network's output overflows on the validation input (inf or NaN){where}: "
        "float16's largest finite value is 65504; scale the network or export it in float32"
    )


def _first_overflow(model: ModelProto, real: OrtNetwork, probe: list[Tensor]) -> str | None:
    """The first node (in graph order) with a non-finite float16 output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    half = {
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16
    }
    probe_model = ModelProto()
    probe_model.CopyFrom(model)
    outputs = {o.name for o in probe_model.graph.output}
    watched = [
        (node, name)
        for node in probe_model.graph.node
        for name in node.output
        if name in half and name not in outputs
    ]
    probe_model.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT16, None) for _, name in watched
    )
    import onnxruntime as ort

    session = ort.InferenceSession(
        probe_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = {
        spec.name: np.ascontiguousarray(a.detach().cpu().numpy())
        for spec, a in zip(real.inputs, probe, strict=True)
    }
    names = [name for _, name in watched]
    values = dict(zip(names, session.run(names, feed), strict=True)) if names else {}
    for node, name in watched:
        if not np.isfinite(values[name]).all():
            return f"{node.name or node.op_type!r} ({node.op_type}, output {name!r})"
    return None
