"""Model intake: manifests, loaders for ONNX / torch.export / TorchScript, the adapter to
``f(y)``, and validation on a real input.

``load("examples/unet-mri/model.onnx", "examples/unet-mri/manifest.json")`` returns a
:class:`LoadedModel`; its ``reconstructor()`` is ``f(y)`` for the manifest's operator.
"""

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
