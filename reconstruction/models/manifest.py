"""The model manifest: what a network expects and how its measurements were taken.

A manifest is a JSON or YAML document (schema: :func:`manifest_json_schema`)::

    {"name": "unet-mri-25",
     "modality": "mri",
     "image_size": [128, 128],
     "input":  {"domain": "image", "layout": "complex2"},
     "output": {"layout": "complex2"},
     "sampling": {"mask": "mask.npy", "ratio": 0.25},
     "intensity_range": [0.0, 1.0]}

``input.domain``: ``image`` (the adjoint / zero-filled image; coil-combined for multi-coil MRI;
filtered backprojection for CT), ``measurements`` (zero-filled centred k-space ``[B,2,H,W]``,
multi-coil ``[B,2,C,H,W]``, or the sinogram ``[B,1,angles,detectors]``) or ``samples`` (the
measurement vector itself, ``[B,2,M]`` for MRI, ``[B,1,angles*detectors]`` for CT: an
AUTOMAP-style network whose input size is tied to the number of samples).
``layout``: ``complex2`` (float32 real and imaginary channels, ``[B, 2, (C,) H, W]``),
``complex-last`` (real and imaginary parts in a last axis of size 2, ``[B, (C,) H, W, 2]``, as
fastMRI and DIRECT keep them), ``real1`` (one float32 channel: ``part`` says whether it is the
magnitude or the real part of a complex image) or ``real0`` (the same without a channel axis,
``[B, H, W]``, as fastMRI's VarNet returns its image).

``input.extra``: further positional inputs after the measurements / image (:class:`ExtraInput`),
made by the audit for the operator in use: its mask, its coil sensitivities, the number of
fully sampled centre lines of its mask, or a constant (see :mod:`reconstruction.models.extras`).
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reconstruction import sampling
from reconstruction.data import array_sha256
from reconstruction.documents import read_document, read_mapping, validation_problem
from reconstruction.models.formats import ModelError

if TYPE_CHECKING:
    from reconstruction.operators import LinearOperator

__all__ = [
    "ESPIRIT",
    "ExtraInput",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "OutputSpec",
    "PatternSpec",
    "SamplingSpec",
    "build_operator",
    "load_manifest",
    "manifest_json_schema",
    "mask_sha256",
    "sampling_mask",
    "shipped_sensitivities",
]

Modality = Literal["mri", "mri-multicoil", "ct"]
Layout = Literal["complex2", "complex-last", "real1", "real0"]
ExtraRole = Literal["mask", "sensitivities", "num_low_frequencies", "constant"]
ExtraDtype = Literal["float32", "bool", "int64", "complex64"]
#: an axis of an extra input's shape: a size, or a symbol bound by the audit (``B``: the batch,
#: ``C``: the coils, ``H`` and ``W``: the image size)
Axis = Annotated[int, Field(ge=1, le=1 << 16)] | Literal["B", "C", "H", "W"]
#: the most extra inputs a manifest may declare, and the most axes one may have
MAX_EXTRA_INPUTS = 8
MAX_AXES = 8
Part = Literal["magnitude", "real"]
#: how far a stated ``sampling.ratio`` may differ from the mask's actual ratio
RATIO_TOLERANCE = 0.01
#: the largest image side a manifest may declare
MAX_IMAGE_SIZE = 2048
#: ``sampling.sensitivities``: maps estimated from the measured data's ACS region
ESPIRIT = "espirit"


class ManifestError(ModelError):
    """A manifest is invalid; ``field`` names the offending entry (dotted path) when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"manifest field '{field}': {message}" if field else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_axes(shape: list[Any], allowed: str, role: str, *, complex_last: bool) -> None:
    """Symbols in ``allowed`` only, each once and in that order; sizes must be 1 (the trailing
    2 of a complex-last float32 array excepted)."""
    body = shape[:-1] if complex_last else shape
    if complex_last and (not shape or shape[-1] != 2):
        raise ValueError(
            f"a float32 {role} holds complex values: its shape must end in 2 (complex-last)"
        )
    symbols = [a for a in body if isinstance(a, str)]
    for axis in symbols:
        if axis not in allowed:
            raise ValueError(
                f"a {role} has no axis {axis!r}: use {', '.join(allowed)} (or 1) in its shape"
            )
    if len(set(symbols)) != len(symbols) or symbols != sorted(symbols, key=allowed.index):
        raise ValueError(
            f"the {role}'s symbols must appear once each, in the order {', '.join(allowed)}"
        )
    sizes = [a for a in body if not isinstance(a, str)]
    if any(a != 1 for a in sizes):
        raise ValueError(
            f"the {role}'s shape takes the symbols {', '.join(allowed)} and singleton axes (1), "
            f"not fixed sizes {sizes}"
        )


class ExtraInput(_Strict):
    """A further positional input of the network, made by the audit for the operator in use.

    ``mask``: the sampling mask ``[H, W]`` broadcast into ``shape`` (an axis it lacks must be
    constant: ``[1, 1, 1, W, 1]`` takes a mask of whole columns, as fastMRI's); ``sensitivities``:
    the coil maps ``[C, H, W]`` (``complex64``, or ``float32`` with a last axis of 2);
    ``num_low_frequencies``: how many fully sampled centre columns the mask has (as fastMRI
    counts them); ``constant``: ``value`` in every entry. ``B`` in a shape is the batch."""

    role: ExtraRole
    shape: Annotated[list[Axis], Field(max_length=MAX_AXES)] = Field(
        description="Axes: sizes, or the symbols B (batch), C (coils), H and W (image size)."
    )
    dtype: ExtraDtype
    value: float | None = Field(None, description="role constant: the value of every entry.")
    name: str | None = Field(
        None,
        max_length=200,
        description="The network's name for this input (checked against the model when given).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExtraInput:
        if (self.role == "constant") != (self.value is not None):
            raise ValueError("a value is given for role 'constant', and only for it")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError("the constant's value must be finite")
        if self.role == "mask":
            if self.dtype == "complex64":
                raise ValueError("a mask is bool, float32 or int64, not complex64")
            _check_axes(self.shape, "BHW", "mask", complex_last=False)
            if not {"H", "W"} & set(self.shape):
                raise ValueError("a mask's shape needs H, W or both")
        elif self.role == "sensitivities":
            if self.dtype not in ("complex64", "float32"):
                raise ValueError("sensitivities are complex64, or float32 with a last axis of 2")
            _check_axes(self.shape, "BCHW", "sensitivities", complex_last=self.dtype == "float32")
            if not {"C", "H", "W"} <= set(self.shape):
                raise ValueError("the sensitivities' shape needs the axes C, H and W")
        elif self.role == "num_low_frequencies":
            if self.dtype not in ("int64", "float32"):
                raise ValueError("num_low_frequencies is int64 or float32")
            _check_axes(self.shape, "B", "num_low_frequencies", complex_last=False)
        return self


class InputSpec(_Strict):
    domain: Literal["image", "measurements", "samples"] = Field(
        "image", description="What the network receives (see the module documentation)."
    )
    layout: Layout = "complex2"
    part: Part = Field(
        "magnitude", description="For layouts real1 and real0: which part of the image."
    )
    name: str | None = Field(
        None,
        max_length=200,
        description="The network's name for its first input (checked against the model).",
    )
    extra: Annotated[list[ExtraInput], Field(max_length=MAX_EXTRA_INPUTS)] = Field(
        default_factory=list,
        description="Further positional inputs after the measurements / image, in order.",
    )


class OutputSpec(_Strict):
    layout: Layout = "complex2"
    part: Part = Field(
        "magnitude",
        description="For layouts real1 and real0: whether the output is a magnitude or a real.",
    )


class PatternSpec(_Strict):
    kind: sampling.Pattern = "variable-density"
    ratio: Annotated[float, Field(gt=0.0, le=1.0)]
    seed: int = 0
    centre: Annotated[float | None, Field(ge=0.0, lt=1.0)] = Field(
        None, description="Fully sampled central fraction (pattern default when absent)."
    )


class SamplingSpec(_Strict):
    mask: str | None = Field(
        None, description="A .npy boolean [H, W] mask, DC at (H//2, W//2), beside the manifest."
    )
    ratio: Annotated[float | None, Field(gt=0.0, le=1.0)] = Field(
        None, description="The training sampling ratio (checked against the mask)."
    )
    pattern: PatternSpec | None = None
    coils: Annotated[int | None, Field(ge=1, le=64)] = Field(
        None,
        description="mri-multicoil: number of coils (of the simulated birdcage array when "
        "sampling.sensitivities is absent).",
    )
    sensitivities: str | None = Field(
        None,
        description="mri-multicoil: the coil maps, a .npy complex [C, H, W] file beside the "
        "manifest (C = sampling.coils), or 'espirit' (estimated by ESPIRiT from the ACS region "
        "of the measured k-space the audit runs on); absent: simulated birdcage maps.",
    )
    angles: int | list[float] | None = Field(
        None, description="CT: a count (equispaced on [0, pi)) or the angles in radians."
    )
    detectors: Annotated[int | None, Field(ge=1)] = None


class Manifest(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._+-]+$")]
    modality: Modality
    image_size: tuple[
        Annotated[int, Field(ge=8, le=MAX_IMAGE_SIZE)],
        Annotated[int, Field(ge=8, le=MAX_IMAGE_SIZE)],
    ]
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    sampling: SamplingSpec
    intensity_range: tuple[float, float] = (0.0, 1.0)
    description: str | None = None
    statement: str | None = Field(
        None, description="The submitter's statement on training / test data independence."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        lo, hi = self.intensity_range
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError("intensity_range must be two finite numbers with lo < hi")
        s = self.sampling
        if self.modality == "ct":
            if s.angles is None:
                raise ValueError("sampling.angles is required for modality 'ct'")
            if s.mask is not None or s.pattern is not None or s.coils is not None:
                raise ValueError("sampling.mask, pattern and coils are for MRI, not 'ct'")
            if self.image_size[0] != self.image_size[1]:
                raise ValueError("CT images must be square")
            if {"complex2", "complex-last"} & {self.input.layout, self.output.layout}:
                raise ValueError(
                    "CT data is real: use layout 'real1' (or 'real0') for input and output"
                )
            if isinstance(s.angles, int) and not 1 <= s.angles <= 3600:
                raise ValueError("sampling.angles must be between 1 and 3600")
        else:
            if (s.mask is None) == (s.pattern is None):
                raise ValueError("MRI sampling needs exactly one of sampling.mask and .pattern")
            if s.angles is not None or s.detectors is not None:
                raise ValueError("sampling.angles and detectors are for CT, not MRI")
            if self.modality == "mri-multicoil" and s.coils is None:
                raise ValueError("sampling.coils is required for modality 'mri-multicoil'")
            if self.modality == "mri" and (s.coils is not None or s.sensitivities is not None):
                raise ValueError("sampling.coils and sensitivities are for 'mri-multicoil'")
            if self.input.domain == "samples" and self.modality == "mri-multicoil":
                raise ValueError("input.domain 'samples' is supported for 'mri' and 'ct'")
        for i, extra in enumerate(self.input.extra):
            if self.modality == "ct" and extra.role in ("mask", "num_low_frequencies"):
                raise ValueError(f"input.extra.{i}: role {extra.role!r} is for MRI, not 'ct'")
            needs_coils = extra.role == "sensitivities" or "C" in extra.shape
            if needs_coils and self.modality != "mri-multicoil":
                raise ValueError(
                    f"input.extra.{i}: coil sensitivities (and the axis C) are for modality "
                    "'mri-multicoil'"
                )
        return self

    @property
    def training_ratio(self) -> float | None:
        """The sampling ratio the network was trained at (MRI), when stated."""
        if self.sampling.pattern is not None:
            return self.sampling.pattern.ratio
        return self.sampling.ratio


def manifest_json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (published in the docs)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "recon-audit model manifest"
    return schema


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a JSON or YAML manifest; :class:`ManifestError` on any problem."""
    p = Path(path)
    try:  # the messages name the file, never its folder (an upload's is the server's)
        text = read_document(p, f"manifest {p.name}")
        data = read_mapping(text, p.name, as_json=p.suffix.lower() == ".json")
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        field, message = validation_problem(exc)
        raise ManifestError(message, field) from exc


def _referenced_file(base_dir: Path, name: str, field: str) -> Path:
    """A file named by the manifest: a plain relative path inside ``base_dir``, not a link."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not name.strip():
        raise ManifestError(f"{name!r} must be a relative path inside the manifest's folder", field)
    path = base_dir / pure
    if path.is_symlink():
        raise ManifestError(f"{name!r} is a symbolic link; links are not accepted", field)
    if not path.is_file():
        raise ManifestError(f"{name!r} was not found beside the manifest", field)
    return path


def sampling_mask(manifest: Manifest, base_dir: str | Path) -> np.ndarray:
    """The MRI training mask ``[H, W]`` (centred, boolean) from the file or the pattern."""
    s = manifest.sampling
    shape = manifest.image_size
    if s.pattern is not None:
        p = s.pattern
        return sampling.pattern_mask(p.kind, shape, p.ratio, p.seed, center_fraction=p.centre)
    assert s.mask is not None
    path = _referenced_file(Path(base_dir), s.mask, "sampling.mask")
    try:
        mask: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise ManifestError(
            f"{s.mask} is not a readable .npy array: {exc}", "sampling.mask"
        ) from exc
    if mask.shape != tuple(shape):
        raise ManifestError(
            f"mask shape {list(mask.shape)} differs from image_size {list(shape)}", "sampling.mask"
        )
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.number) or not np.all((mask == 0) | (mask == 1)):
            raise ManifestError("the mask must be boolean (or hold only 0 and 1)", "sampling.mask")
        mask = mask.astype(bool)
    if not mask.any():
        raise ManifestError("the mask selects no k-space sample", "sampling.mask")
    actual = sampling.mask_ratio(mask)
    if s.ratio is not None and abs(actual - s.ratio) > RATIO_TOLERANCE:
        raise ManifestError(
            f"the mask samples {actual:.4f} of k-space, not the stated {s.ratio}", "sampling.ratio"
        )
    return mask


def shipped_sensitivities(manifest: Manifest, base_dir: str | Path) -> np.ndarray | None:
    """The coil maps ``[C, H, W]`` shipped beside the manifest (``sampling.sensitivities``, a
    file), checked: shape ``[sampling.coils, *image_size]``, numeric, finite, not all zero;
    ``None`` when the maps are simulated or estimated."""
    name = manifest.sampling.sensitivities
    if name is None or name == ESPIRIT:
        return None
    field = "sampling.sensitivities"
    path = _referenced_file(Path(base_dir), name, field)
    try:
        maps: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ManifestError(f"{name} is not a readable .npy array: {exc}", field) from exc
    expected = [manifest.sampling.coils, *manifest.image_size]
    if list(maps.shape) != expected:
        raise ManifestError(
            f"maps of shape {list(maps.shape)}; expected [C, H, W] = {expected} "
            "(sampling.coils, image_size)",
            field,
        )
    if not np.issubdtype(maps.dtype, np.number):
        raise ManifestError(f"the maps must be numeric (complex), got dtype {maps.dtype}", field)
    if not np.all(np.isfinite(maps)):
        raise ManifestError("the maps contain NaN or infinite values", field)
    if not np.any(maps):
        raise ManifestError("the maps are zero everywhere", field)
    return maps.astype(np.complex128)


def mask_sha256(mask: np.ndarray) -> str:
    """SHA-256 of a mask's C-ordered boolean bytes (the hash reports and certificates print)."""
    return array_sha256(np.asarray(mask, dtype=bool))


def build_operator(
    manifest: Manifest, base_dir: str | Path, *, mask: np.ndarray | None = None
) -> LinearOperator:
    """The forward operator the network was trained for (``mask`` overrides the MRI mask,
    e.g. for the more-samples test)."""
    # here, not at the top: the manifest's checks import no torch (the web process runs them)
    from reconstruction.operators import MultiCoilMRI, ParallelBeamCT, SingleCoilMRI

    if manifest.modality == "ct":
        s = manifest.sampling
        return ParallelBeamCT(manifest.image_size, s.angles, s.detectors)
    m = sampling_mask(manifest, base_dir) if mask is None else mask
    if manifest.modality == "mri":
        return SingleCoilMRI(m)
    assert manifest.sampling.coils is not None
    maps = shipped_sensitivities(manifest, base_dir)
    # 'espirit': birdcage maps until the audit's data give the estimate (run_suite)
    return MultiCoilMRI(m, manifest.sampling.coils if maps is None else maps)
