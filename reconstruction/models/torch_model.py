"""PyTorch intake: torch.export programs (``.pt2``, first class) and TorchScript (legacy).

Both are loaded on the CPU and moved by the caller. Loading runs code paths of torch that
deserialize untrusted bytes: the service calls this only inside its isolated worker process
(see :mod:`reconstruction.models.formats` for what is refused before loading).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from reconstruction.models.formats import ModelError

__all__ = ["load_torch_export", "load_torchscript"]


def load_torch_export(path: Path) -> torch.nn.Module:
    try:
        program = torch.export.load(str(path))
        module: torch.nn.Module = program.module()
    except Exception as exc:
        raise ModelError(f"{path.name} is not a loadable torch.export program: {exc}") from exc
    return module


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            # torch.jit.load is deprecated upstream (torch >= 2.11); TorchScript stays accepted
            warnings.simplefilter("ignore", FutureWarning)
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{path.name} is not a loadable TorchScript archive: {exc}") from exc
    return module
