"""``load(model, manifest)``: recognise, check, load, adapt and validate a network."""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from reconstruction import metrics
from reconstruction.data import resize_image, scale_to_range, shepp_logan
from reconstruction.models.adapter import Network, Reconstructor, magnitude
from reconstruction.models.extras import describe
from reconstruction.models.formats import ModelError, ModelFormat, detect_format, sha256_file
from reconstruction.models.manifest import (
    Manifest,
    build_operator,
    load_manifest,
    mask_sha256,
    sampling_mask,
)
from reconstruction.models.onnx_model import (
    MAX_MODEL_BYTES,
    PARITY_TOLERANCE,
    OrtNetwork,
    convert_to_torch,
    read_onnx,
)
from reconstruction.models.quantized import reduced_precision
from reconstruction.models.signature import (
    check_export,
    check_onnx,
    check_torchscript,
    expected_inputs,
)
from reconstruction.models.surrogate import SURROGATE_TOLERANCE, build_surrogate, check_overflow
from reconstruction.models.torch_model import (
    NumberArguments,
    load_torch_export,
    load_torchscript,
)
from reconstruction.operators import LinearOperator

__all__ = [
    "PLAUSIBLE_FACTOR",
    "GradientRoute",
    "LoadedModel",
    "from_module",
    "load",
    "probe_image",
]

GradientAccess = Literal["white-box", "black-box"]
#: how the search gets its gradient: the network's own (``exact``), a differentiable stand-in
#: that the real network's forward passes are judged by (``straight-through surrogate``: a
#: quantized network's), or none (``gradient-free``: forward queries only)
GradientRoute = Literal["exact", "straight-through surrogate", "gradient-free"]
#: an output whose largest magnitude exceeds this many times the intensity range's largest
#: magnitude is implausible (a network that does not take the manifest's scaling)
PLAUSIBLE_FACTOR = 4.0
#: an output whose standard deviation is at most this fraction of its largest magnitude is
#: constant: well above float32 rounding around a constant (about 1e-7 of it), well below
#: anything an image shows (one grey level of 256 is 4e-3)
CONSTANT_TOLERANCE = 1e-4
#: relative size of the perturbed probe used for the conversion parity check
PROBE_PERTURBATION = 0.05
PROBE_SEED = 0


@dataclass
class LoadedModel:
    """A validated network with its operator; ``summary()`` is what ``recon-audit inspect``
    prints."""

    name: str
    format: ModelFormat
    sha256: str
    size_bytes: int
    gradient_access: GradientAccess
    manifest: Manifest
    manifest_sha256: str
    operator: LinearOperator
    mask: np.ndarray | None
    module: torch.nn.Module | None
    ort: OrtNetwork | None
    max_batch: int | None
    fixed_size: bool
    fixed_size_reason: str | None
    input_shape: list[int]
    output_shape: list[int]
    parity: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    forward_backend: Literal["torch", "onnxruntime"] = "torch"
    notes: list[str] = field(default_factory=list)
    #: where the search's gradient comes from (see :data:`GradientRoute`); ``None``: from
    #: ``gradient_access`` (``exact`` when white-box, else ``gradient-free``)
    route: GradientRoute | None = None
    #: the reduced-precision forms of an ONNX graph (``QDQ``, ``QOperator``, ``dynamic``,
    #: ``float16``); empty for float32
    precision: list[str] = field(default_factory=list)

    @property
    def gradient_route(self) -> GradientRoute:
        if self.route is not None:
            return self.route
        return "exact" if self.gradient_access == "white-box" else "gradient-free"

    def reconstructor(
        self, op: LinearOperator | None = None, *, differentiable: bool = True
    ) -> Reconstructor:
        """``f(y)`` for ``op`` (default: the manifest's operator).

        ``differentiable=False`` picks the faster forward backend (onnxruntime or torch, as
        measured at load; onnxruntime for a straight-through surrogate, whose forward pass is
        onnxruntime's); ``True`` needs white-box access."""
        if differentiable and self.gradient_access != "white-box":
            raise ModelError(f"{self.name} is black-box (no gradient route): only forward passes")
        network: Network
        if self.module is not None and (differentiable or self.forward_backend == "torch"):
            network = self.module
        else:
            assert self.ort is not None
            network = self.ort
        return Reconstructor(network, op or self.operator, self.manifest, max_batch=self.max_batch)

    def inputs(self) -> list[dict[str, Any]]:
        """What the network receives at each position for the manifest's operator (``-1``:
        the batch); the more-samples test hands the mask and counts of each of its steps."""
        spec = self.manifest.input
        first = {
            "position": 0,
            "role": spec.domain,
            "name": spec.name,
            "shape": self.input_shape,
            "dtype": "float32",
            "layout": spec.layout,
        }
        return [first, *describe(self.reconstructor(differentiable=False).extras)]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "gradient_access": self.gradient_access,
            "gradient_route": self.gradient_route,
            "precision": ", ".join(self.precision) if self.precision else "float32",
            "modality": self.manifest.modality,
            "operator": type(self.operator).__name__,
            "manifest_sha256": self.manifest_sha256,
            "mask_sha256": None if self.mask is None else mask_sha256(self.mask),
            "sampling_ratio": (float(self.mask.mean()) if self.mask is not None else None),
            "input": {
                **self.manifest.input.model_dump(exclude={"name", "extra"}),
                "shape": self.input_shape,
            },
            "inputs": self.inputs(),
            "output": {**self.manifest.output.model_dump(), "shape": self.output_shape},
            "batch": "dynamic" if self.max_batch is None else f"at most {self.max_batch}",
            "fixed_size": self.fixed_size,
            "fixed_size_reason": self.fixed_size_reason,
            "parity_error": None if self.parity is None else self.parity["max_relative_difference"],
            "parity": self.parity,
            "forward_backend": self.forward_backend,
            "validation": self.validation,
            "notes": self.notes,
        }


def probe_image(manifest: Manifest) -> Tensor:
    """The validation image: Shepp-Logan at the manifest's size, scaled to its intensity range."""
    h, w = manifest.image_size
    image = scale_to_range(resize_image(shepp_logan(max(h, w)), (h, w)), manifest.intensity_range)
    return torch.from_numpy(np.asarray(image, dtype=np.float32))[None]


def _check_declared_shape(declared: list[int | str | None], want: list[int], m: Manifest) -> None:
    """Compare an ONNX input's static axes with what the manifest implies; name the field."""
    described = f"input.domain {m.input.domain!r}, input.layout {m.input.layout!r}"
    if len(declared) != len(want):
        raise ModelError(
            f"manifest field 'input.domain': {described} give a {len(want)}-D input {want}, "
            f"the ONNX model takes a {len(declared)}-D input {declared}"
        )
    for axis, (d, w) in enumerate(zip(declared, want, strict=True)):
        if axis == 0 or not isinstance(d, int) or d == w:
            continue
        field_name = (
            "input.layout"
            if axis == 1
            else "sampling"
            if m.input.domain != "image"
            else "image_size"
        )
        raise ModelError(
            f"manifest field '{field_name}': {described} and image_size {list(m.image_size)} "
            f"give an input of shape {want}, the ONNX model takes {declared}"
        )


def _batch_limit(rec: Reconstructor, x: Tensor) -> int | None:
    """``None`` when the network takes a batch of two, else 1 (it is fixed at batch one)."""
    try:
        with torch.no_grad():
            out = rec.run_network(torch.cat([x, x]))
        return None if out.shape[0] == 2 else 1
    except Exception:
        return 1


def _median_seconds(fn: Any, x: Tensor, repeats: int = 3) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _validate(rec: Reconstructor, y: Tensor, truth: Tensor, m: Manifest) -> dict[str, Any]:
    try:
        with torch.no_grad():
            image = rec(y)
    except ModelError:
        raise
    except Exception as exc:
        shape = list(rec.network_input(y).shape)
        extras = "".join(
            f", then {e.spec.role} {list(e.tensor.shape)} {e.spec.dtype}" for e in rec.extras
        )
        raise ModelError(
            f"the network failed on the input the manifest describes (shape {shape} from "
            f"input.domain {m.input.domain!r}, input.layout {m.input.layout!r}, image_size "
            f"{list(m.image_size)}{extras}): {type(exc).__name__}: {exc}"
        ) from exc
    if not bool(torch.isfinite(torch.view_as_real(image) if image.is_complex() else image).all()):
        raise ModelError("the network returned non-finite values (NaN or inf) on a valid input")
    shown = magnitude(image)
    lo, hi = m.intensity_range
    bound = PLAUSIBLE_FACTOR * max(abs(lo), abs(hi))
    peak = float(shown.abs().max())
    if peak > bound:
        raise ModelError(
            f"manifest field 'intensity_range': the network's output reaches {peak:.4g} on a "
            f"test image scaled to {[lo, hi]} (more than {PLAUSIBLE_FACTOR:g}x the range): "
            "check the intensity range and output layout"
        )
    spread = float(shown.std())
    if spread <= CONSTANT_TOLERANCE * peak:
        raise ModelError(
            f"the network returned a constant image on a valid input (its standard deviation, "
            f"{spread:.3g}, is at most {CONSTANT_TOLERANCE:g} of its largest value, {peak:.4g})"
        )
    return {
        "image": "builtin:shepp-logan",
        "output_min": float(shown.min()),
        "output_max": float(shown.max()),
        "psnr_db": float(metrics.psnr(shown, truth)),
        "ssim": float(metrics.ssim(shown, truth)),
    }


def _gradient_reaches_input(rec: Reconstructor, y: Tensor) -> str | None:
    """``None`` when a finite, non-zero gradient flows from the output back to ``y``."""
    yy = y.clone().requires_grad_(True)
    try:
        magnitude(rec(yy)).square().sum().backward()
    except Exception as exc:
        return f"backward pass failed: {type(exc).__name__}: {exc}"[:300]
    grad = yy.grad
    if grad is None or not bool(
        torch.isfinite(torch.view_as_real(grad) if grad.is_complex() else grad).all()
    ):
        return "no finite gradient reaches the measurements"
    if float(grad.abs().max()) == 0.0:
        return "the gradient with respect to the measurements is zero"
    return None


@dataclass
class _Intake:
    """What format-specific loading produced, before the shared adaptation and validation."""

    manifest: Manifest
    manifest_sha256: str
    mask: np.ndarray | None
    op: LinearOperator
    format: ModelFormat
    sha256: str
    size_bytes: int
    module: torch.nn.Module | None = None
    ort: OrtNetwork | None = None
    parity: dict[str, Any] | None = None
    max_batch: int | None = None
    notes: list[str] = field(default_factory=list)
    route: GradientRoute | None = None
    precision: list[str] = field(default_factory=list)


Probed = tuple[Tensor, Tensor, list[Tensor]]


def _probes(intake: _Intake, device: str) -> Probed:
    """The validation image, its measurements, and the network inputs for it and for a seeded
    perturbation of it (the parity probes)."""
    truth = probe_image(intake.manifest).to(device)
    y = intake.op.A(truth)
    gen = torch.Generator().manual_seed(PROBE_SEED)
    noise = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    y_perturbed = y + noise * (PROBE_PERTURBATION * y.norm() / noise.norm())
    shape_probe = Reconstructor(lambda t: t, intake.op, intake.manifest)
    return truth, y, [shape_probe.network_input(y), shape_probe.network_input(y_perturbed)]


def _finish(intake: _Intake, device: str, probed: Probed) -> LoadedModel:
    """Batching, validation on a real input (``probed``: from :func:`_probes`), gradient check
    and backend choice."""
    manifest, op = intake.manifest, intake.op
    truth, y, probes = probed
    module, ort, notes = intake.module, intake.ort, intake.notes
    max_batch = intake.max_batch
    if module is not None:
        module = module.to(device)
        if max_batch is None:
            max_batch = _batch_limit(Reconstructor(module, op, manifest), probes[0])
    network: Network = module if module is not None else ort  # type: ignore[assignment]
    rec = Reconstructor(network, op, manifest, max_batch=max_batch)
    validation = _validate(rec, y, truth, manifest)
    gradient_access: GradientAccess = "black-box"
    route = intake.route
    if module is not None:
        problem = _gradient_reaches_input(rec, y)
        if problem is None:
            gradient_access = "white-box"
        else:
            notes.append(f"black-box: {problem}")
            route = None
    backend: Literal["torch", "onnxruntime"] = "torch" if module is not None else "onnxruntime"
    if route == "straight-through surrogate":
        backend = "onnxruntime"  # the surrogate's forward pass is onnxruntime's
    elif ort is not None and module is not None:
        x = rec.network_input(y)
        timings = {
            name: _median_seconds(Reconstructor(net, op, manifest).run_network, x)
            for name, net in (("torch", module), ("onnxruntime", ort))
        }
        backend = "torch" if timings["torch"] <= timings["onnxruntime"] else "onnxruntime"
        validation["forward_seconds"] = timings
    fixed_reason = None
    if manifest.input.domain == "samples":
        fixed_reason = (
            "the network takes the measurement vector itself: its input size is tied to the "
            "number of samples, so it cannot take more samples"
        )
    with torch.no_grad():
        output_shape = [-1, *rec.run_network(probes[0][:1]).shape[1:]]
    return LoadedModel(
        name=manifest.name,
        format=intake.format,
        sha256=intake.sha256,
        size_bytes=intake.size_bytes,
        gradient_access=gradient_access,
        manifest=manifest,
        manifest_sha256=intake.manifest_sha256,
        operator=op,
        mask=intake.mask,
        module=module,
        ort=ort,
        max_batch=max_batch,
        fixed_size=fixed_reason is not None,
        fixed_size_reason=fixed_reason,
        input_shape=[-1, *probes[0].shape[1:]],
        output_shape=output_shape,
        parity=intake.parity,
        validation=validation,
        forward_backend=backend,
        notes=notes,
        route=route if gradient_access == "white-box" else None,
        precision=intake.precision,
    )


def _manifest_parts(manifest: Manifest, base_dir: Path) -> tuple[np.ndarray | None, LinearOperator]:
    mask = None if manifest.modality == "ct" else sampling_mask(manifest, base_dir)
    return mask, build_operator(manifest, base_dir, mask=mask)


def _take_float(
    intake: _Intake, proto: Any, arguments: list[list[Tensor]], parity_tolerance: float
) -> None:
    """A float32 graph: its torch conversion, when one matches onnxruntime (exact gradients)."""
    assert intake.ort is not None
    conversion = convert_to_torch(proto, intake.ort, arguments, tol=parity_tolerance)
    intake.module = conversion.module
    intake.parity = {
        "route": conversion.route,
        "max_relative_difference": conversion.max_relative_difference,
        "tolerance": parity_tolerance,
        "probes": f"validation image and a {PROBE_PERTURBATION:g} relative perturbation",
        "attempts": conversion.attempts,
    }
    if conversion.module is None:
        intake.notes.append("no torch conversion matched onnxruntime: black-box, forward only")


def _take_reduced(
    intake: _Intake,
    proto: Any,
    arguments: list[list[Tensor]],
    parity_tolerance: float,
    surrogate_tolerance: float,
) -> None:
    """A quantized or float16 graph: exact autograd through its rounding is zero almost
    everywhere, so its gradient route is the straight-through surrogate, or none."""
    assert intake.ort is not None
    forms = ", ".join(intake.precision)
    if "float16" in intake.precision:
        check_overflow(proto, intake.ort, arguments[0])
    surrogate = build_surrogate(
        proto, intake.ort, arguments, tol=surrogate_tolerance, conversion_tol=parity_tolerance
    )
    intake.parity = {
        **surrogate.parity(surrogate_tolerance, parity_tolerance),
        "probes": f"validation image and a {PROBE_PERTURBATION:g} relative perturbation",
    }
    if surrogate.module is None:
        intake.notes.append(
            f"{forms} network without a straight-through surrogate ({surrogate.problem}): "
            "black-box, forward only"
        )
        return
    intake.module, intake.route = surrogate.module, "straight-through surrogate"
    intake.notes.append(
        f"{forms} network: forward passes are onnxruntime's; gradients are those of its "
        "float32 shadow (straight-through surrogate), within "
        f"{surrogate.max_relative_difference:.3g} of it on the validation probes"
    )


def load(
    model_path: str | Path,
    manifest_path: str | Path,
    *,
    device: str = "cpu",
    max_bytes: int = MAX_MODEL_BYTES,
    parity_tolerance: float = PARITY_TOLERANCE,
    surrogate_tolerance: float = SURROGATE_TOLERANCE,
) -> LoadedModel:
    """Load a network (ONNX, torch.export ``.pt2``, TorchScript) with its manifest, adapt it to
    ``f(y)`` and validate it on a real input. A quantized or float16 ONNX graph gets a
    straight-through surrogate (:mod:`reconstruction.models.surrogate`) when its float shadow
    is within ``surrogate_tolerance`` of it; ``parity_tolerance`` bounds every conversion.
    :class:`ModelError` (or its subclass ``ManifestError``) on any problem, with a message
    naming the manifest field when one is at fault."""
    model_path, manifest_path = Path(model_path), Path(manifest_path)
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} not found")
    manifest = load_manifest(manifest_path)
    mask, op = _manifest_parts(manifest, manifest_path.parent)
    fmt = detect_format(model_path)
    size = model_path.stat().st_size
    if size > max_bytes:
        raise ModelError(f"{model_path.name} is {size} bytes; the limit is {max_bytes}")
    intake = _Intake(
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        mask=mask,
        op=op,
        format=fmt,
        sha256=sha256_file(model_path),
        size_bytes=size,
    )
    probed = _probes(intake, device)
    if fmt == "onnx":
        with tempfile.TemporaryDirectory(prefix="recon-audit-onnx-") as workdir:
            proto = read_onnx(model_path, Path(workdir), max_bytes=max_bytes)
        ort = OrtNetwork(proto, device)
        probes = probed[2]
        shaper = Reconstructor(ort, op, manifest)
        check_onnx(ort.inputs, expected_inputs(manifest, shaper.network_arguments(probes[0])))
        _check_declared_shape(ort.input_shape, list(probes[0].shape), manifest)
        if isinstance(ort.input_shape[0], int):
            intake.max_batch = ort.input_shape[0]
            probes = [p.expand(intake.max_batch, *p.shape[1:]) for p in probes]
        arguments = [shaper.network_arguments(p) for p in probes]
        intake.ort = ort
        intake.precision = reduced_precision(proto)
        if intake.precision:
            _take_reduced(intake, proto, arguments, parity_tolerance, surrogate_tolerance)
        else:
            _take_float(intake, proto, arguments, parity_tolerance)
    else:
        shaper = Reconstructor(lambda *a: a[0], op, manifest)
        expected = expected_inputs(manifest, shaper.network_arguments(probed[2][0]))
        if fmt == "torch.export":
            program = load_torch_export(model_path)
            check_export(program, expected)
            intake.module = program.module()
        else:
            module = load_torchscript(model_path)
            numbers = check_torchscript(module, expected)
            intake.module = NumberArguments(module, numbers) if numbers else module
            intake.notes.append("TorchScript is deprecated upstream; prefer torch.export (.pt2)")
    return _finish(intake, device, probed)


def from_module(
    module: torch.nn.Module,
    manifest: Manifest,
    *,
    base_dir: str | Path = ".",
    device: str = "cpu",
) -> LoadedModel:
    """Adapt and validate an in-memory torch module (trusted code: tests, calibration
    controls, notebooks). Its ``sha256`` hashes the class name and the parameters/buffers."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    mask, op = _manifest_parts(manifest, Path(base_dir))
    intake = _Intake(
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest.model_dump_json().encode()).hexdigest(),
        mask=mask,
        op=op,
        format="torch.module",
        sha256=digest.hexdigest(),
        size_bytes=sum(t.numel() * t.element_size() for t in module.state_dict().values()),
        module=module.eval(),
    )
    return _finish(intake, device, _probes(intake, device))
