"""The adapter from a network's conventions to a reconstructor ``f(y)`` of the manifest's
operator: input domain (adjoint / FBP / k-space grid / raw samples), channel layouts, batching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from reconstruction.models.formats import ModelError
from reconstruction.models.manifest import Manifest
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI

__all__ = ["Network", "Reconstructor", "magnitude"]

#: a network: one float32 tensor in, one out (a torch module, or onnxruntime behind a callable)
Network = Callable[[Tensor], Tensor]


def magnitude(image: Tensor) -> Tensor:
    """The real image scored against the ground truth: ``|z|`` for complex outputs."""
    return image.abs() if image.is_complex() else image


def _channels(z: Tensor, layout: str, part: str) -> Tensor:
    """``[B, ...]`` -> ``[B, C, ...]`` in a network layout (``complex2``: C=2, ``real1``: C=1)."""
    if layout == "complex2":
        if not z.is_complex():
            z = torch.complex(z, torch.zeros_like(z))
        return torch.stack((z.real, z.imag), 1)
    if z.is_complex():
        z = z.abs() if part == "magnitude" else z.real
    return z.unsqueeze(1)


class Reconstructor(torch.nn.Module):
    """``f(y)``: measurements ``[B, M]`` (MRI) or ``[B, angles, detectors]`` (CT) of ``op``
    -> images ``[B, H, W]`` (complex for ``output.layout = complex2``, else real).

    ``max_batch`` splits larger batches (``1`` for networks exported with a fixed batch of one).
    Differentiable end to end when the network is a torch module.
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

    def network_output(self, out: Tensor, batch: int) -> Tensor:
        """The network's ``[B, C, H, W]`` output as an image batch ``[B, H, W]``."""
        m = self.manifest
        channels = 2 if m.output.layout == "complex2" else 1
        want = [batch, channels, *m.image_size]
        if list(out.shape) != want:
            field = (
                "output.layout"
                if out.ndim != 4 or out.shape[1] != channels
                else "image_size"
                if list(out.shape[2:]) != list(m.image_size)
                else "batch"
            )
            raise ModelError(
                f"manifest field '{field}': output.layout {m.output.layout!r} and image_size "
                f"{list(m.image_size)} expect an output of shape {want}, the network returned "
                f"{list(out.shape)}"
            )
        out = out.float()
        return torch.complex(out[:, 0], out[:, 1]) if channels == 2 else out[:, 0]

    def run_network(self, x: Tensor) -> Tensor:
        if self.max_batch is None or x.shape[0] <= self.max_batch:
            return self._net(x)
        return torch.cat([self._net(part) for part in x.split(self.max_batch)])

    def forward(self, y: Tensor) -> Tensor:
        return self.network_output(self.run_network(self.network_input(y)), y.shape[0])
