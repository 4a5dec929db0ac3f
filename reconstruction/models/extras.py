"""The network's further inputs (manifest ``input.extra``), made for the operator in use.

Each :class:`~reconstruction.models.manifest.ExtraInput` is made from the operator the network
is called for, so the more-samples test hands the network the mask of each ladder step:

* ``mask``: the operator's centred mask ``[H, W]``, reshaped into the declared shape. An axis
  the shape lacks must be constant along it (``[1, 1, 1, W, 1]``, fastMRI's mask of whole
  columns, takes a mask whose rows are all equal).
* ``sensitivities``: the operator's coil maps ``[C, H, W]`` (complex64, or float32 with a last
  axis of 2).
* ``num_low_frequencies``: :func:`low_frequency_count` of the operator's mask.
* ``constant``: the declared value in every entry.

``B`` axes are made with size 1 and expanded to the batch at each call; symbols ``C``, ``H``,
``W`` are the operator's coils and image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction.models.formats import ModelError
from reconstruction.models.manifest import ExtraInput, Manifest
from reconstruction.operators import LinearOperator, MultiCoilMRI, SingleCoilMRI

__all__ = ["DTYPES", "Extra", "describe", "low_frequency_count", "make_extras"]

DTYPES = {
    "float32": torch.float32,
    "bool": torch.bool,
    "int64": torch.int64,
    "complex64": torch.complex64,
}


def low_frequency_count(mask: np.ndarray | Tensor) -> int:
    """The number of fully sampled centre columns of a centred mask ``[H, W]``, as fastMRI
    counts them: the largest ``n`` whose block of columns ``[(W - n + 1) // 2, ... + n)`` is
    fully sampled (where fastMRI's mask functions put their ``n`` low frequencies and where
    its VarNet reads them); 0 when the centre column is not fully sampled.

    >>> m = np.zeros((4, 10), dtype=bool); m[:, 3:7] = True; m[:, 0] = True
    >>> low_frequency_count(m)
    4
    """
    array = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask, dtype=bool)
    full = np.asarray(array.all(axis=0))
    width = full.size
    count = 0  # the blocks are nested: block n lies inside block n + 1
    while count < width:
        start = (width - count) // 2
        if not full[start : start + count + 1].all():
            break
        count += 1
    return count


@dataclass(frozen=True)
class Extra:
    """One made extra input: ``tensor`` with its ``B`` axis (if any) of size 1."""

    spec: ExtraInput
    tensor: Tensor
    batch_axis: int | None

    def at(self, batch: int, device: torch.device | str) -> Tensor:
        """The input for a batch of ``batch`` on ``device``."""
        t = self.tensor.to(device)
        if self.batch_axis is None:
            return t
        sizes = list(t.shape)
        sizes[self.batch_axis] = batch
        return t.expand(sizes)


def _field(index: int, part: str = "") -> str:
    return f"input.extra.{index}{'.' + part if part else ''}"


def _mask_of(op: LinearOperator, index: int, role: str) -> Tensor:
    if not isinstance(op, SingleCoilMRI | MultiCoilMRI):
        raise ModelError(f"manifest field '{_field(index)}': role {role!r} needs an MRI operator")
    return op.mask


def _mask(op: LinearOperator, spec: ExtraInput, index: int) -> Tensor:
    m = _mask_of(op, index, "mask")
    for symbol, axis, along in (("H", 0, "rows"), ("W", 1, "columns")):
        if symbol in spec.shape:
            continue
        first = m.narrow(axis, 0, 1)
        if not bool((m == first).all()):
            kind = "whole columns" if symbol == "H" else "whole rows"
            raise ModelError(
                f"manifest field '{_field(index, 'shape')}': the shape {spec.shape} has no axis "
                f"{symbol}, so it takes masks of {kind}; this mask differs between its {along} "
                f"(use a shape with {symbol}, or a sampling pattern of lines)"
            )
    kept = m[: None if "H" in spec.shape else 1, : None if "W" in spec.shape else 1]
    sizes = {"H": kept.shape[0], "W": kept.shape[1]}
    shape = [sizes[a] if a in sizes else 1 for a in spec.shape]
    return kept.reshape(shape).to(DTYPES[spec.dtype])


def _sensitivities(op: LinearOperator, spec: ExtraInput, index: int) -> Tensor:
    if not isinstance(op, MultiCoilMRI):
        raise ModelError(
            f"manifest field '{_field(index)}': role 'sensitivities' needs a multi-coil operator"
        )
    maps = op.sensitivities.to(torch.complex64)
    body = spec.shape[:-1] if spec.dtype == "float32" else spec.shape
    sizes = {"C": maps.shape[0], "H": maps.shape[1], "W": maps.shape[2]}
    shaped = maps.reshape([sizes[a] if a in sizes else 1 for a in body])
    return torch.view_as_real(shaped).contiguous() if spec.dtype == "float32" else shaped


def _sizes(op: LinearOperator, spec: ExtraInput) -> list[int]:
    sizes = {"H": op.in_shape[0], "W": op.in_shape[-1]}
    if isinstance(op, MultiCoilMRI):
        sizes["C"] = int(op.sensitivities.shape[0])
    return [a if isinstance(a, int) else sizes.get(a, 1) for a in spec.shape]


def _make(op: LinearOperator, spec: ExtraInput, index: int) -> Tensor:
    if spec.role == "mask":
        return _mask(op, spec, index)
    if spec.role == "sensitivities":
        return _sensitivities(op, spec, index)
    if spec.role == "num_low_frequencies":
        count = low_frequency_count(_mask_of(op, index, spec.role))
        if count == 0:
            raise ModelError(
                f"manifest field '{_field(index, 'role')}': the mask has no fully sampled centre "
                "column, so it has no number of low frequencies (fastMRI's masks always do)"
            )
        return torch.full(_sizes(op, spec), count, dtype=DTYPES[spec.dtype])
    assert spec.value is not None
    return torch.full(_sizes(op, spec), spec.value, dtype=DTYPES[spec.dtype])


def make_extras(manifest: Manifest, op: LinearOperator) -> list[Extra]:
    """The manifest's extra inputs for ``op``; :class:`ModelError` naming the field when one
    cannot be made (a mask of the wrong kind for its shape, no fully sampled centre)."""
    out = []
    for index, spec in enumerate(manifest.input.extra):
        axis = spec.shape.index("B") if "B" in spec.shape else None
        out.append(Extra(spec, _make(op, spec, index), axis))
    return out


def describe(extras: list[Extra]) -> list[dict[str, Any]]:
    """What the network receives in each extra input (``-1``: the batch), for summaries."""
    rows = []
    for index, extra in enumerate(extras, start=1):
        shape = list(extra.tensor.shape)
        if extra.batch_axis is not None:
            shape[extra.batch_axis] = -1
        row: dict[str, Any] = {
            "position": index,
            "role": extra.spec.role,
            "name": extra.spec.name,
            "shape": shape,
            "declared_shape": extra.spec.shape,
            "dtype": extra.spec.dtype,
        }
        if extra.spec.role in ("num_low_frequencies", "constant"):
            row["value"] = extra.tensor.flatten()[0].item()
        if extra.spec.role == "mask":
            row["sampled"] = float(extra.tensor.float().mean())
        rows.append(row)
    return rows
