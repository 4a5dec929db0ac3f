"""ONNX intake: strict checks, external data from a private folder, onnxruntime forward passes,
and conversion to torch for gradients, checked against onnxruntime.

Conversion routes, in order (measured on torch 2.14 exports, opset 20): ``onnx2pytorch`` 0.6
converts the exporter's opset-20 graphs directly, ``DFT`` and ``Resize``-19 included;
``onnx2torch`` 1.5 has neither, so its route first lowers the graph to opset 17 with
``onnx.version_converter`` and serves as the fallback for graphs ``onnx2pytorch`` cannot take.
A route is accepted only when its output matches onnxruntime on a real input and on a perturbed
one to :data:`PARITY_TOLERANCE` (max abs difference relative to the output's max abs value);
when no route passes, the model is black-box (forward passes through onnxruntime only).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
import torch
from onnx import ModelProto, TensorProto
from torch import Tensor

from reconstruction.models.formats import ModelError
from reconstruction.models.quantized import (
    CONTRIB_DOMAIN,
    QUANTIZATION_CONTRIB_OPS,
    check_scales,
)

__all__ = [
    "ALLOWED_DOMAINS",
    "MAX_MODEL_BYTES",
    "OPSET_RANGE",
    "PARITY_TOLERANCE",
    "Conversion",
    "OnnxInput",
    "OrtNetwork",
    "convert_to_torch",
    "read_onnx",
    "relative_difference",
]

#: the default ONNX operator domain (nodes may also use onnxruntime's built-in quantized
#: operators, :data:`~reconstruction.models.quantized.QUANTIZATION_CONTRIB_OPS`; no custom ops)
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
#: default-domain opsets accepted (onnxruntime 1.2x runs these; the converters need >= 13)
OPSET_RANGE = (13, 22)
#: the largest model accepted, external data included
MAX_MODEL_BYTES = 1 << 30
#: the largest relative output difference between a torch conversion and onnxruntime that still
#: counts as the same network (float32 round-off of deep networks is ~1e-6 relative)
PARITY_TOLERANCE = 1e-4


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _check_domains(model: ModelProto) -> None:
    """Judge a graph by the operators its nodes use, not by the domains it imports.

    Quantization tools list domains no node uses (onnxruntime's pre-processing imports nine:
    ``ai.onnx.ml``, ``com.microsoft``, ``ai.onnx.training``, ...); those imports are ignored.
    Every node must be a default-domain operator or one of onnxruntime's built-in quantized
    operators (:data:`~reconstruction.models.quantized.QUANTIZATION_CONTRIB_OPS`); the
    default domain's opset must lie in :data:`OPSET_RANGE`."""
    default = [o.version for o in model.opset_import if o.domain in ALLOWED_DOMAINS]
    if not default:
        raise ModelError("the ONNX model imports no default-domain opset")
    for version in default:
        if not OPSET_RANGE[0] <= version <= OPSET_RANGE[1]:
            raise ModelError(
                f"ONNX opset {version} is not supported (accepted: "
                f"{OPSET_RANGE[0]} to {OPSET_RANGE[1]})"
            )
    if model.functions:
        raise ModelError("ONNX model-local functions are not accepted; inline them on export")
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain in ALLOWED_DOMAINS:
                continue
            name = node.name or node.op_type
            if node.domain == CONTRIB_DOMAIN:
                if node.op_type in QUANTIZATION_CONTRIB_OPS:
                    continue
                raise ModelError(
                    f"node {name!r} uses {node.domain}::{node.op_type}, which is not one of the "
                    "built-in quantized operators accepted (com.microsoft::"
                    f"{', '.join(sorted(QUANTIZATION_CONTRIB_OPS))})"
                )
            raise ModelError(
                f"node {name!r} uses the custom operator {node.domain}::{node.op_type} (domain "
                f"{node.domain!r}): custom operators are not accepted, only default-domain ONNX "
                "operators and onnxruntime's built-in quantized ones"
            )


def _external_files(model: ModelProto) -> set[str]:
    """Plain file names of the external data the model references (checked, not yet opened)."""
    names: set[str] = set()
    for graph in _graphs(model.graph):
        tensors: list[TensorProto] = list(graph.initializer)
        tensors += [a.t for n in graph.node for a in n.attribute if a.HasField("t")]
        for tensor in tensors:
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            entries = {e.key: e.value for e in tensor.external_data}
            location = entries.get("location", "")
            pure = PurePosixPath(location)
            if (
                not location
                or "/" in location
                or "\\" in location
                or location in (".", "..")
                or pure.is_absolute()
                or location != location.strip()
            ):
                raise ModelError(
                    f"tensor {tensor.name!r} keeps its data in {location!r}: external data must "
                    "be a plain file name in the model's folder (no paths, no '..')"
                )
            names.add(location)
    return names


def read_onnx(path: Path, workdir: Path, *, max_bytes: int = MAX_MODEL_BYTES) -> ModelProto:
    """Check an ONNX file (and its external data) and return it fully loaded in memory.

    The model and the data files it names are copied into ``workdir`` (a private temporary
    folder) and loaded from there, so nothing outside the upload is ever read."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelError(f"{path.name} is {size} bytes; the limit is {max_bytes}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path.name} is not a readable ONNX model: {exc}") from exc
    _check_domains(model)
    private = workdir / "model.onnx"
    shutil.copyfile(path, private)
    for name in sorted(_external_files(model)):
        source = path.parent / name
        if source.is_symlink() or not source.is_file():
            raise ModelError(
                f"external data file {name!r} referenced by {path.name} is missing "
                "(or is a link); upload it beside the model"
            )
        size += source.stat().st_size
        if size > max_bytes:
            raise ModelError(f"{path.name} with its external data exceeds {max_bytes} bytes")
        shutil.copyfile(source, workdir / name)
    try:
        onnx.checker.check_model(str(private), full_check=True)
        loaded = onnx.load(str(private))
    except Exception as exc:
        raise ModelError(f"{path.name} fails the ONNX checker: {exc}") from exc
    check_scales(loaded)
    return loaded


@dataclass(frozen=True)
class OnnxInput:
    """A graph input as onnxruntime declares it."""

    name: str
    #: ``tensor(float)``, ``tensor(bool)``, ``tensor(int64)``, ...
    type: str
    #: ints for fixed axes, names (or None) for dynamic ones
    shape: list[int | str | None]


class OrtNetwork:
    """A forward-only network run by onnxruntime on torch tensors (one per graph input)."""

    def __init__(self, model: ModelProto, device: str = "cpu") -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                model.SerializeToString(), options, providers=providers
            )
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
        if len(self.session.get_outputs()) < 1:
            raise ModelError("the ONNX model has no output")
        self.inputs = [OnnxInput(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]
        if not self.inputs:
            raise ModelError("the ONNX model takes no input")

    @property
    def input_shape(self) -> list[int | str | None]:
        """The declared shape of the first input."""
        return self.inputs[0].shape

    def __call__(self, *args: Tensor) -> Tensor:
        feed = {
            spec.name: np.ascontiguousarray(a.detach().cpu().numpy())
            for spec, a in zip(self.inputs, args, strict=True)
        }
        out = self.session.run(None, feed)[0]
        return torch.from_numpy(np.asarray(out)).to(args[0].device)


@dataclass
class Conversion:
    """The outcome of converting ONNX to torch: the module when a route passed, and every try."""

    module: torch.nn.Module | None = None
    route: str | None = None
    max_relative_difference: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)


class _Quiet(torch.nn.Module):
    """A converted module, run with the converter's own UserWarnings silenced."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out: Tensor = self.inner(*args)
        return out


def _via_onnx2pytorch(model: ModelProto) -> torch.nn.Module:
    from onnx2pytorch import ConvertModel

    module: torch.nn.Module = ConvertModel(model, experimental=False)
    return module


def _via_onnx2torch(model: ModelProto) -> torch.nn.Module:
    from onnx import version_converter
    from onnx2torch import convert

    lowered = version_converter.convert_version(model, 17) if _opset(model) > 17 else model
    module: torch.nn.Module = convert(lowered)
    return module


def _opset(model: ModelProto) -> int:
    return max(int(o.version) for o in model.opset_import if o.domain in ALLOWED_DOMAINS)


ROUTES: tuple[tuple[str, Callable[[ModelProto], torch.nn.Module]], ...] = (
    ("onnx2pytorch", _via_onnx2pytorch),
    ("onnx2torch", _via_onnx2torch),
)


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``max |a - b|`` over ``max |b|`` (the reference's)."""
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def convert_to_torch(
    model: ModelProto,
    reference: OrtNetwork,
    probes: list[list[Tensor]],
    *,
    tol: float = PARITY_TOLERANCE,
) -> Conversion:
    """Try every route; keep the first whose outputs match onnxruntime on all ``probes`` (each
    the network's positional inputs) and whose gradients flow back to the first input."""
    result = Conversion()
    expected = [reference(*p) for p in probes]
    for name, route in ROUTES:
        attempt: dict[str, Any] = {"route": name}
        result.attempts.append(attempt)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = _Quiet(route(model)).eval()
                diffs = []
                for probe, want in zip(probes, expected, strict=True):
                    with torch.no_grad():
                        got = module(*probe)
                    if tuple(got.shape) != tuple(want.shape):
                        raise ValueError(f"output shape {list(got.shape)} != {list(want.shape)}")
                    diffs.append(relative_difference(got, want))
                x = probes[0][0].clone().requires_grad_(True)
                module(x, *probes[0][1:]).square().sum().backward()
                if x.grad is None or not bool(torch.isfinite(x.grad).all()):
                    raise ValueError("no finite gradient reaches the input")
        except Exception as exc:
            attempt["error"] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        worst = max(diffs)
        attempt["max_relative_difference"] = worst
        if worst <= tol and not np.isnan(worst):
            for p in module.parameters():
                p.requires_grad_(False)
            result.module, result.route, result.max_relative_difference = module, name, worst
            return result
        attempt["error"] = f"differs from onnxruntime by {worst:.3g} (tolerance {tol:g})"
    return result
