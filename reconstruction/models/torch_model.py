"""PyTorch intake: torch.export programs (``.pt2``, first class) and TorchScript (legacy).

Both are loaded on the CPU and moved by the caller. Loading runs code paths of torch that
deserialize untrusted bytes: the service calls this only inside its isolated worker process
(see :mod:`reconstruction.models.formats` for what is refused before loading).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from reconstruction.models.formats import ModelError, pickled_members

__all__ = ["NumberArguments", "load_torch_export", "load_torchscript"]


def load_torch_export(path: Path) -> torch.export.ExportedProgram:
    """The program of an archive that :func:`~reconstruction.models.formats.detect_format`
    accepted; first every member it would unpickle must be plain tensor data (torch's
    ``weights_only`` unpickler: tensors and containers only)."""
    with zipfile.ZipFile(path) as z:
        for name in pickled_members(z.namelist()):
            try:
                torch.load(io.BytesIO(z.read(name)), weights_only=True)
            except Exception as exc:
                raise ModelError(
                    f"the torch.export archive member {name} is not plain tensor data: {exc}"
                ) from exc
    try:
        program = torch.export.load(str(path))
        program.module()
    except Exception as exc:
        raise ModelError(f"{path.name} is not a loadable torch.export program: {exc}") from exc
    return program


class NumberArguments(torch.nn.Module):
    """A TorchScript network that takes some inputs as Python numbers (``int``,
    ``Optional[int]``, ...): the one-element tensor at each position of ``numbers`` is passed as
    the number type given there."""

    def __init__(self, inner: torch.nn.Module, numbers: dict[int, type]) -> None:
        super().__init__()
        self.inner = inner
        self.numbers = numbers

    def forward(self, *args: Tensor) -> Tensor:
        passed = [self.numbers[i](a.item()) if i in self.numbers else a for i, a in enumerate(args)]
        out: Tensor = self.inner(*passed)
        return out


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            # torch.jit.load is deprecated upstream (torch >= 2.11); TorchScript stays accepted
            warnings.simplefilter("ignore", FutureWarning)
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{path.name} is not a loadable TorchScript archive: {exc}") from exc
    return module
