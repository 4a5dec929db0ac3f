"""The adapter from a network's conventions to a reconstructor ``f(y)`` of the manifest's
operator: input domain (adjoint / FBP / k-space grid / raw samples), channel layouts, the extra
inputs made for the operator (its mask, coil maps, ...), batching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reconstruction.models.extras import Extra, make_extras
from reconstruction.models.formats import ModelError
from reconstruction.models.manifest import Manifest
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI

__all__ = ["Network", "Reconstructor", "magnitude"]

#: a network: the input tensor and the manifest's extra inputs in, one tensor out (a torch
#: module, or onnxruntime behind a callable)
Network = Callable[..., Tensor]


def magnitude(image: Tensor) -> Tensor:
    """The real image scored against the ground truth: ``|z|`` for complex outputs."""
    return image.abs() if image.is_complex() else image


def _channels(z: Tensor, layout: str, part: str) -> Tensor:
    """``[B, ...]`` -> a network layout: ``complex2`` ``[B, 2, ...]``, ``complex-last``
    ``[B, ..., 2]``, ``real1`` ``[B, 1, ...]``, ``real0`` ``[B, ...]``."""
    if layout in ("complex2", "complex-last"):
        if not z.is_complex():
            z = torch.complex(z, torch.zeros_like(z))
        return torch.stack((z.real, z.imag), 1 if layout == "complex2" else -1)
    if z.is_complex():
        z = z.abs() if part == "magnitude" else z.real
    return z.unsqueeze(1) if layout == "real1" else z


def output_shape(manifest: Manifest, batch: int) -> list[int]:
    """The output shape the manifest's output layout and image size imply."""
    size = list(manifest.image_size)
    return {
        "complex2": [batch, 2, *size],
        "complex-last": [batch, *size, 2],
        "real1": [batch, 1, *size],
        "real0": [batch, *size],
    }[manifest.output.layout]


def _output_field(got: list[int], want: list[int], layout: str, size: list[int]) -> str:
    """The manifest field an output of the wrong shape contradicts."""
    channel = {"complex2": 1, "real1": 1, "complex-last": -1}.get(layout)
    if len(got) != len(want) or (channel is not None and got[channel] != want[channel]):
        return "output.layout"
    image = slice(2, 4) if layout in ("complex2", "real1") else slice(1, 3)
    return "image_size" if got[image] != size else "batch"


class Reconstructor(torch.nn.Module):
    """``f(y)``: measurements ``[B, M]`` (MRI) or ``[B, angles, detectors]`` (CT) of ``op``
    -> images ``[B, H, W]`` (complex for ``output.layout = complex2``, else real).

    ``max_batch`` splits larger batches (``1`` for networks exported with a fixed batch of one).
    The manifest's ``input.extra`` inputs are made for ``op`` (:mod:`reconstruction.models.
    extras`) and passed after the input. Differentiable end to end (in the measurements) when
    the network is a torch module.
    """

    def __init__(
        self,
        network: Network,
        op: LinearOperator,
        manifest: Manifest,
        *,
        max_batch: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(network, torch.nn.Module):
            self.network: Network = network
        else:
            self._external = network  # not a module: onnxruntime
        self.op = op
        self.manifest = manifest
        self.max_batch = max_batch
        self.extras: list[Extra] = make_extras(manifest, op)

    @property
    def _net(self) -> Network:
        return self.network if "network" in self._modules else self._external

    def network_input(self, y: Tensor) -> Tensor:
        """The tensor the network receives for measurements ``y`` (float32)."""
        spec = self.manifest.input
        op = self.op
        if spec.domain == "image":
            z = op.fbp(y) if isinstance(op, ParallelBeamCT) else op.A_adjoint(y)
            x = _channels(z, spec.layout, spec.part)
        elif spec.domain == "measurements":
            if isinstance(op, ParallelBeamCT):
                x = _channels(y, spec.layout, spec.part)
            else:
                assert isinstance(op, SingleCoilMRI | MultiCoilMRI)
                x = _channels(op.to_grid(y), spec.layout, spec.part)
        else:
            x = _channels(y.flatten(1), spec.layout, spec.part)
        return x.float()

    def network_arguments(self, x: Tensor) -> list[Tensor]:
        """The network's positional inputs for the input batch ``x``: ``x``, then the extras."""
        return [x, *(extra.at(x.shape[0], x.device) for extra in self.extras)]

    def network_output(self, out: Tensor, batch: int) -> Tensor:
        """The network's output in its layout as an image batch ``[B, H, W]``."""
        m = self.manifest
        layout = m.output.layout
        want = output_shape(m, batch)
        if list(out.shape) != want:
            field = _output_field(list(out.shape), want, layout, list(m.image_size))
            raise ModelError(
                f"manifest field '{field}': output.layout {layout!r} and image_size "
                f"{list(m.image_size)} expect an output of shape {want}, the network returned "
                f"{list(out.shape)}"
            )
        out = out.float()
        if layout == "complex2":
            return torch.complex(out[:, 0], out[:, 1])
        if layout == "complex-last":
            return torch.complex(out[..., 0], out[..., 1])
        return out[:, 0] if layout == "real1" else out

    def run_network(self, x: Tensor) -> Tensor:
        """The network on the input batch ``x`` (with its extras), in parts of ``max_batch``."""
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self._net(*self.network_arguments(x))
        return torch.cat(
            [self._net(*self.network_arguments(part)) for part in x.split(self.max_batch)]
        )

    def forward(self, y: Tensor) -> Tensor:
        return self.network_output(self.run_network(self.network_input(y)), y.shape[0])
