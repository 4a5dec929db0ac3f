"""The science's commands of ``recon-audit`` (``simulate``, ``selfcheck``, ``inspect``,
``manifest-schema``, ``audit``): imported by :mod:`app.cli` only when one of them runs, so the
service's commands (``migrate``, ``admin``, ``serve``, ``worker``) start without torch."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

import reconstruction
from app.cli import InputError
from reconstruction import baselines, metrics, sampling
from reconstruction.batch import gaussian, norms
from reconstruction.data import (
    ImageReadError,
    array_sha256,
    dicom_example,
    random_ellipses,
    read_image,
    resize_image,
    scale_to_range,
    shepp_logan,
)
from reconstruction.instability.common import scores as audit_scores
from reconstruction.instability.registry import TESTS
from reconstruction.models import magnitude as tensor_magnitude
from reconstruction.models import manifest_json_schema, mask_sha256
from reconstruction.operators import (
    LinearOperator,
    MultiCoilMRI,
    OperatorShapeError,
    ParallelBeamCT,
    SingleCoilMRI,
)
from reconstruction.protocols import BUILTIN
from reconstruction.run import RunInputError, inspect_model, json_progress, load_audit
from reconstruction.testing import check_operator, example_operators

BUILTIN_IMAGES = ("shepp-logan", "ellipses", "ct-small", "mr-small")


def _load_ground_truth(image: str, size: int, seed: int) -> tuple[np.ndarray, str]:
    if image == "shepp-logan":
        return shepp_logan(size), "builtin:shepp-logan"
    if image == "ellipses":
        return random_ellipses(1, size, seed)[0], f"builtin:ellipses(seed={seed})"
    if image in ("ct-small", "mr-small"):
        loaded = dicom_example("CT_small" if image == "ct-small" else "MR_small")
    else:
        loaded = read_image(image)
    array = np.abs(loaded.array) if np.iscomplexobj(loaded.array) else loaded.array
    return scale_to_range(resize_image(array, (size, size)), (0.0, 1.0)), loaded.source


def _png(path: Path, image: np.ndarray, lo: float, hi: float) -> None:
    from PIL import Image

    scaled = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    Image.fromarray(np.round(scaled * 255).astype(np.uint8)).save(path)


def _scores(image: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """simulation.json's metrics of one image: the audits' scores (PSNR, SSIM), and the
    relative l2 and l-infinity errors."""
    one = {name: values[0] for name, values in audit_scores(image, truth).items()}
    return {
        **one,
        "relative_l2": float(metrics.relative_l2(image, truth)),
        "linf": float(metrics.linf_error(image, truth)),
    }


@click.command()
@click.option(
    "--modality",
    type=click.Choice(["mri", "mri-multicoil", "ct"]),
    default="mri",
    show_default=True,
)
@click.option(
    "--image",
    default="shepp-logan",
    show_default=True,
    help=f"One of {', '.join(BUILTIN_IMAGES)}, or a PNG/TIFF/NPY/DICOM/NIfTI file.",
)
@click.option("--size", type=click.IntRange(16, 1024), default=128, show_default=True)
@click.option(
    "--pattern",
    type=click.Choice(sampling.PATTERNS),
    default="variable-density",
    show_default=True,
    help="MRI sampling pattern.",
)
@click.option(
    "--ratio",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.25,
    show_default=True,
    help="MRI sampling ratio.",
)
@click.option(
    "--coils",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Simulated birdcage coils (mri-multicoil).",
)
@click.option(
    "--angles",
    type=click.IntRange(1, 3600),
    default=50,
    show_default=True,
    help="Equispaced CT angles on [0, pi).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--noise",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Gaussian measurement noise, relative to ||A x|| (seeded by --seed).",
)
@click.option(
    "--baselines/--no-baselines",
    "with_baselines",
    default=True,
    show_default=True,
    help="Also reconstruct with the l1-wavelet and TV baselines.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder (created).",
)
def simulate(
    modality: str,
    image: str,
    size: int,
    pattern: str,
    ratio: float,
    coils: int,
    angles: int,
    seed: int,
    noise: float,
    with_baselines: bool,
    device: str,
    out_dir: Path,
) -> None:
    """Measure a test image with a forward operator and reconstruct it with A_dagger and the
    compressed-sensing baselines (l1-wavelet, TV).

    Writes simulation.json (parameters, seeds, hashes, metrics) and PNG figures to --out.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA device is available")
    try:
        truth, source = _load_ground_truth(image, size, seed)
        op: LinearOperator
        record: dict[str, Any]
        if modality == "ct":
            op = ParallelBeamCT(size, angles)
            record = {"angles": angles, "detectors": op.out_shape[1], "fbp_filter": "ram-lak"}
        else:
            mask = sampling.pattern_mask(pattern, (size, size), ratio, seed)  # type: ignore[arg-type]
            op = SingleCoilMRI(mask) if modality == "mri" else MultiCoilMRI(mask, coils)
            record = {
                "pattern": pattern,
                "ratio_requested": ratio,
                "ratio": sampling.mask_ratio(mask),
                "mask_sha256": mask_sha256(mask),
            }
            if modality == "mri-multicoil":
                record["coils"] = coils
    except (ImageReadError, OperatorShapeError, ValueError) as exc:
        raise InputError(str(exc)) from exc

    x = torch.from_numpy(truth)[None].to(device)
    y = op.A(x)
    if noise > 0:
        # Gaussian noise with ||e|| = noise * ||y|| (complex where y is), seeded
        y = y + gaussian(y, noise * norms(y), torch.Generator().manual_seed(seed))
    reconstruction_ = op.A_dagger(y)
    shown = tensor_magnitude(reconstruction_)
    scores = _scores(shown, x)
    solved: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
    if with_baselines:
        for name, solve in (
            ("l1_wavelet", baselines.l1_wavelet_solve),
            ("total_variation", baselines.total_variation_solve),
        ):
            result, info = solve(y, op)
            real = tensor_magnitude(result)
            solved[name] = (real, {**_scores(real, x), **dataclasses.asdict(info)})
    out_dir.mkdir(parents=True, exist_ok=True)
    recon = shown[0].cpu().numpy()
    _png(out_dir / "ground_truth.png", truth, 0.0, 1.0)
    _png(out_dir / "reconstruction.png", recon, 0.0, 1.0)
    _png(out_dir / "error.png", np.abs(recon - truth), 0.0, 0.25)
    for name, (result, _) in solved.items():
        _png(out_dir / f"{name}.png", result[0].cpu().numpy(), 0.0, 1.0)
    if modality == "ct":
        sino = y[0].cpu().numpy()
        _png(out_dir / "sinogram.png", sino, float(sino.min()), float(sino.max()))
    else:
        assert isinstance(op, SingleCoilMRI | MultiCoilMRI)
        _png(out_dir / "mask.png", op.mask.numpy().astype(float), 0.0, 1.0)
    summary = {
        "schema": "recon-audit/simulation/v1",
        "version": reconstruction.__version__,
        "modality": modality,
        "operator": type(op).__name__,
        "image": {"source": source, "size": size, "sha256": array_sha256(truth)},
        "sampling": record,
        "seed": seed,
        "device": device,
        "reconstruction": "A_dagger ("
        + (
            "filtered backprojection"
            if modality == "ct"
            else "zero-filled adjoint"
            if modality == "mri"
            else "CGLS pseudo-inverse"
        )
        + ")",
        "noise": {"relative": noise, "seed": seed},
        "metrics": scores,
        "baselines": {name: record for name, (_, record) in solved.items()},
    }
    (out_dir / "simulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    extra = "".join(f", {name} {record['psnr_db']:.2f} dB" for name, (_, record) in solved.items())
    click.echo(
        f"{type(op).__name__} on {source}: A_dagger PSNR {scores['psnr_db']:.2f} dB, "
        f"SSIM {scores['ssim']:.3f}{extra} -> {out_dir}"
    )


@click.command()
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "all"]),
    default="all",
    show_default=True,
    help="'all' checks the CPU and, when present, CUDA.",
)
@click.option("--tol", type=float, default=1e-5, show_default=True)
def selfcheck(device: str, tol: float) -> None:
    """Check every operator's adjoint and linearity on this machine; exit 1 on a failure."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA device is available")
    devices = ["cpu", "cuda"] if device == "all" else [device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    reports = [
        check_operator(name, factory(), device=d, tol=tol)
        for d in devices
        for name, factory in example_operators().items()
    ]
    click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    if not all(r.passed for r in reports):
        sys.exit(1)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The model's manifest (JSON or YAML); files it names are read beside it.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def inspect(model: Path, manifest_path: Path, device: str) -> None:
    """Load, adapt and validate a network (ONNX, torch.export .pt2, TorchScript) and print a
    JSON summary: format, sha256, gradient access, parity error, input/output spec, fixed size.
    """
    try:
        summary = inspect_model(model, manifest_path, device)
    except RunInputError as exc:
        raise InputError(str(exc)) from exc
    click.echo(json.dumps(summary, indent=2))


@click.command("manifest-schema")
def manifest_schema() -> None:
    """Print the JSON Schema of model manifests."""
    click.echo(json.dumps(manifest_json_schema(), indent=2))


class _Bars:
    """One progress bar per test, on stderr (stdout keeps the summary)."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self.done: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            for other in self.bars.values():
                other.render_finish()
            bar = click.progressbar(length=total, label=f"{stage:<13}", file=sys.stderr)
            bar.render_progress()
            self.bars[stage], self.done[stage] = bar, 0
        self.bars[stage].update(done - self.done[stage])
        self.done[stage] = done

    def close(self) -> None:
        for bar in self.bars.values():
            bar.render_finish()


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--images",
    "image_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Test images (PNG/TIFF/NPY/DICOM/NIfTI), volumes, DICOM series (a folder of .dcm "
    "files) or measured k-space (fastMRI HDF5, .h5), repeatable; default: the built-in set.",
)
@click.option(
    "--slices",
    "slices",
    default=None,
    help="Which slices of each volume, series or HDF5 file: 'all', or indices and half-open "
    "ranges ('3', '2:6', '0,4,8:10'); default: the middle slice. 2-D images ignore it.",
)
@click.option(
    "--protocol",
    "protocol_name",
    default="quick",
    show_default=True,
    help=f"One of {', '.join(BUILTIN)}, or a protocol YAML file.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder (created): results.json, figures/, report.html, report.pdf.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["unstable", "inconclusive"]),
    default=None,
    help="Exit 1 when a verdict is unstable ('inconclusive': unstable or inconclusive).",
)
@click.option(
    "--detail",
    "detail_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A custom structural detail (image or mask: PNG/NPY/...), repeatable.",
)
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write report.pdf.")
@click.option(
    "--sign/--no-sign",
    default=True,
    show_default=True,
    help="Sign report.pdf with the service's key: RECON_AUDIT_SIGNING_PKCS12, else the local CA "
    "under RECON_AUDIT_DATA_DIR/pki (created on first use).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(TESTS),
    help="Run only these tests (a shard of an audit); the others are reported as skipped.",
)
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(["bar", "json"]),
    default="bar",
    show_default=True,
    help="Progress on stderr: bars, or JSON lines for a supervising process.",
)
def audit(
    model: Path,
    manifest_path: Path,
    image_paths: tuple[Path, ...],
    slices: str | None,
    protocol_name: str,
    device: str,
    out_dir: Path,
    fail_on: str | None,
    detail_paths: tuple[Path, ...],
    pdf: bool,
    sign: bool,
    only: tuple[str, ...],
    progress_mode: str,
) -> None:
    """Run the three instability tests on a network beside the CS baseline and write the
    results (results.json), figures and the report. Exit 0 when the audit completed, whatever
    the verdicts (see --fail-on), 2 on bad input."""
    from app.certificates.identity import Certificate
    from app.report import write_report
    from reconstruction.suite import run_suite

    try:
        inputs = load_audit(
            model,
            manifest_path,
            images=image_paths,
            slices=slices,
            protocol=protocol_name,
            details=detail_paths,
            device=device,
        )
    except RunInputError as exc:
        raise InputError(str(exc)) from exc
    loaded, protocol = inputs.model, inputs.protocol
    click.echo(
        f"Auditing {loaded.name} ({loaded.format}, {loaded.gradient_access}) with protocol "
        f"{protocol.shown_name} v{protocol.version} ({protocol.sha256[:12]})",
        err=True,
    )
    bars = _Bars() if progress_mode == "bar" else None
    try:
        result = run_suite(
            loaded,
            inputs.images,
            protocol,
            device=device,
            progress=bars or json_progress,
            details=inputs.details,
            only=only or None,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    finally:
        if bars is not None:
            bars.close()
    manifest = json.loads(loaded.manifest.model_dump_json())
    certificate = Certificate(manifest=manifest, signed=sign and pdf)
    files = write_report(result, out_dir, pdf=pdf, certificate=certificate)
    if files.pdf is not None and sign:
        _sign_pdf(files.pdf, files.approval_box)
    for name, test in result.tests.items():
        click.echo(f"{name:<13} {test.verdict:<12} {test.reason}")
    click.echo(f"results: {files.results_json}")
    click.echo(f"report:  {files.pdf or files.html}")
    failing = {"unstable"} if fail_on == "unstable" else {"unstable", "inconclusive"}
    if fail_on and any(t.verdict in failing for t in result.tests.values()):
        sys.exit(1)


def _sign_pdf(pdf: Path, approval_box: Any) -> None:
    from app.certificates.pki import load_service_signer
    from app.certificates.signing import sign_certificate
    from app.errors import AppError
    from app.settings import get_settings

    try:
        signer = load_service_signer(get_settings())
        pdf.write_bytes(sign_certificate(pdf.read_bytes(), signer, approval_box=approval_box))
    except AppError as exc:
        raise InputError(f"signing report.pdf failed: {exc.message}") from exc
    click.echo(f"signed with {signer.source}", err=True)
