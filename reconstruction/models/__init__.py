"""Model intake: manifests, loaders for ONNX / torch.export / TorchScript, the adapter to
``f(y)``, and validation on a real input.

``load("examples/unet-mri/model.onnx", "examples/unet-mri/manifest.json")`` returns a
:class:`LoadedModel`; its ``reconstructor()`` is ``f(y)`` for the manifest's operator.

The format and manifest checks (:mod:`~reconstruction.models.formats`,
:mod:`~reconstruction.models.manifest`) import no torch: the service's web process checks
uploads with them. The names below are loaded from their modules when first used, so that
importing one of those two does not load torch and onnx with the loaders.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconstruction.models.adapter import Reconstructor, magnitude
    from reconstruction.models.formats import ModelError, detect_format, sha256_file
    from reconstruction.models.loader import LoadedModel, from_module, load, probe_image
    from reconstruction.models.manifest import (
        Manifest,
        ManifestError,
        build_operator,
        load_manifest,
        manifest_json_schema,
        mask_sha256,
        sampling_mask,
    )

#: each public name, and the module that defines it
_HOMES = {
    "Reconstructor": "adapter",
    "magnitude": "adapter",
    "ModelError": "formats",
    "detect_format": "formats",
    "sha256_file": "formats",
    "LoadedModel": "loader",
    "from_module": "loader",
    "load": "loader",
    "probe_image": "loader",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "build_operator": "manifest",
    "load_manifest": "manifest",
    "manifest_json_schema": "manifest",
    "mask_sha256": "manifest",
    "sampling_mask": "manifest",
}

__all__ = [
    "LoadedModel",
    "Manifest",
    "ManifestError",
    "ModelError",
    "Reconstructor",
    "build_operator",
    "detect_format",
    "from_module",
    "load",
    "load_manifest",
    "magnitude",
    "manifest_json_schema",
    "mask_sha256",
    "probe_image",
    "sampling_mask",
    "sha256_file",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
