"""A network's inputs checked against the manifest: ONNX graph inputs, TorchScript and
torch.export signatures. Each mismatch is a :class:`ModelError` naming the manifest field.

The manifest describes the network's positional inputs: the input (``input.domain`` /
``input.layout``, position 0) and ``input.extra`` (positions 1, 2, ...). :class:`Expected` is
what the audit will hand over at each position, made for the manifest's operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reconstruction.models.formats import ModelError
from reconstruction.models.manifest import Manifest
from reconstruction.models.onnx_model import OnnxInput

__all__ = ["Expected", "check_export", "check_onnx", "check_torchscript", "expected_inputs"]

#: the dtypes a manifest names, by their ONNX tensor types
ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(bool)": "bool",
    "tensor(int64)": "int64",
    "tensor(complex64)": "complex64",
}
TORCH_DTYPES = {
    torch.float32: "float32",
    torch.bool: "bool",
    torch.int64: "int64",
    torch.complex64: "complex64",
}
#: TorchScript argument types that take a Python number (an extra of shape [] is passed so)
NUMBER_TYPES: dict[str, type] = {
    f"{wrap[0]}{name}{wrap[1]}": kind
    for name, kind in (("int", int), ("float", float), ("bool", bool))
    for wrap in (("", ""), ("Optional[", "]"))
}


@dataclass(frozen=True)
class Expected:
    """What the audit hands the network at one position."""

    field: str
    role: str
    name: str | None
    dtype: str
    #: the shape for the validation input; ``batch_axis`` is the axis that follows the batch
    shape: list[int]
    batch_axis: int | None

    def shape_field(self) -> str:
        return f"{self.field}.shape" if self.field.startswith("input.extra") else "input.layout"


def expected_inputs(manifest: Manifest, arguments: list[torch.Tensor]) -> list[Expected]:
    """The expected inputs for the validation input's ``arguments`` (input, then extras)."""
    spec = manifest.input
    out = [
        Expected("input", spec.domain, spec.name, "float32", list(arguments[0].shape), 0),
    ]
    for i, (extra, tensor) in enumerate(zip(spec.extra, arguments[1:], strict=True)):
        axis = extra.shape.index("B") if "B" in extra.shape else None
        out.append(
            Expected(
                f"input.extra.{i}", extra.role, extra.name, extra.dtype, list(tensor.shape), axis
            )
        )
    return out


def _count_error(kind: str, names: list[str], expected: list[Expected], optional: int = 0) -> None:
    takes = len(names) if not optional else f"{len(names) - optional} to {len(names)}"
    described = ", ".join(["the input"] + [e.role for e in expected[1:]])
    raise ModelError(
        f"manifest field 'input.extra': the {kind} takes {takes} inputs "
        f"({', '.join(names)}), the manifest describes {len(expected)} ({described}): "
        "list every input after the first in input.extra, in order"
    )


def _check_name(kind: str, got: str, want: Expected) -> None:
    if want.name is not None and got != want.name:
        raise ModelError(
            f"manifest field '{want.field}.name': the manifest names it {want.name!r}, "
            f"the {kind}'s input at that position is {got!r}"
        )


def _check_dtype(kind: str, got: str, want: Expected) -> None:
    if got != want.dtype:
        field = f"{want.field}.dtype" if want.field != "input" else "input.layout"
        raise ModelError(
            f"manifest field '{field}': the audit hands a {want.dtype} tensor ({want.role}), "
            f"the {kind} takes {got}"
        )


def _check_static_shape(kind: str, declared: list[Any], want: Expected) -> None:
    """Compare fixed axes (ints) with the expected shape; dynamic axes pass."""
    fixed = [d if isinstance(d, int) else None for d in declared]
    if len(fixed) != len(want.shape) or any(
        d is not None and d != w and axis != want.batch_axis
        for axis, (d, w) in enumerate(zip(fixed, want.shape, strict=False))
    ):
        raise ModelError(
            f"manifest field '{want.shape_field()}': the audit hands {want.role} of shape "
            f"{want.shape}, the {kind} takes {declared}"
        )


def check_onnx(inputs: list[OnnxInput], expected: list[Expected]) -> None:
    """Count, names, types and fixed axes of the extra inputs of an ONNX graph (the first
    input's axes are checked by the loader, which names the field for each)."""
    kind = "ONNX model"
    if len(inputs) != len(expected):
        _count_error(kind, [i.name for i in inputs], expected)
    for got, want in zip(inputs, expected, strict=True):
        _check_name(kind, got.name, want)
        _check_dtype(f"ONNX input {got.name!r}", ONNX_DTYPES.get(got.type, got.type), want)
        if want.field != "input":
            _check_static_shape(kind, got.shape, want)


def check_torchscript(module: torch.nn.Module, expected: list[Expected]) -> dict[int, type]:
    """Check a TorchScript ``forward`` against the manifest; returns the positions of extras
    the network takes as Python numbers (``int``, ``Optional[int]``, ...: declared shape
    ``[]``), with their number type."""
    kind = "TorchScript network"
    try:
        schema = module.forward.schema  # type: ignore[attr-defined]
    except AttributeError as exc:
        raise ModelError("the TorchScript archive has no forward method") from exc
    arguments = list(schema.arguments)[1:]  # without self
    names = [a.name for a in arguments]
    optional = sum(1 for a in arguments if a.has_default_value())
    if not len(arguments) - optional <= len(expected) <= len(arguments):
        _count_error(kind, names, expected, optional)
    numbers: dict[int, type] = {}
    for position, (arg, want) in enumerate(zip(arguments, expected, strict=False)):
        _check_name(kind, arg.name, want)
        type_name = str(arg.type)
        if type_name in NUMBER_TYPES and position > 0:
            if want.shape:
                raise ModelError(
                    f"manifest field '{want.shape_field()}': the network takes {arg.name} as a "
                    f"Python {type_name}, so declare shape [] (it is handed {want.shape})"
                )
            numbers[position] = NUMBER_TYPES[type_name]
        elif type_name not in ("Tensor", "Optional[Tensor]"):
            field = want.field if position > 0 else "input"
            raise ModelError(
                f"manifest field '{field}': the network's input {arg.name} is of type "
                f"{type_name}; the audit hands tensors (or a number for shape [])"
            )
    return numbers


def check_export(program: torch.export.ExportedProgram, expected: list[Expected]) -> None:
    """Check a torch.export program's user inputs against the manifest (count, names, dtypes,
    static axes). Inputs the program specialised to a constant count but take no tensor."""
    kind = "torch.export program"
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = [
        s
        for s in program.graph_signature.input_specs
        if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    names = [getattr(s.arg, "name", "?") for s in specs]
    if len(specs) != len(expected):
        _count_error(kind, names, expected)
    for want, name in zip(expected, names, strict=True):
        _check_name(kind, name, want)
        node = placeholders.get(name)
        value = None if node is None else node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"manifest field '{want.field}': the torch.export program was exported with a "
                f"constant at this position, which it cannot take as an input; export it with "
                f"a tensor there, or bake the value into the network"
            )
        _check_dtype(kind, TORCH_DTYPES.get(value.dtype, str(value.dtype)), want)
        if want.field != "input":  # the first input's axes: checked on the validation run
            declared = [d if isinstance(d, int) else str(d) for d in value.shape]
            _check_static_shape(kind, declared, want)
