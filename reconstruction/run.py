"""The science as the sandbox runs it: ``python -m reconstruction.run audit|inspect ...``.

The jailed child of the service runs this module and nothing of the service (the jail holds
no ``app`` package): ``audit`` loads the network and the test data, runs
:func:`reconstruction.suite.run_suite` and writes ``results.json`` with the figures' arrays
(:mod:`reconstruction.figure_data`), nothing else; the trusted worker draws the figures,
renders and signs the certificate. ``inspect`` loads and validates a network and prints its
summary as JSON (the upload's check); ``images`` reads an uploaded image set and prints its
entries as JSON (:func:`reconstruction.image_sets.summarise`: the service parses uploaded data
only there), or ``{"refused": {"field", "message"}}`` and exits 2. ``images`` loads neither
torch nor the models, so a check of data starts in a tenth of a second. Progress goes to
stderr as JSON lines
(``{"progress": {"stage", "done", "total"}}``); bad input exits 2 with ``Error: <message>`` on
stderr, as the ``recon-audit`` command line does (it calls :func:`load_audit` and
:func:`inspect_model` too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from reconstruction.bounded import ExpansionError
from reconstruction.data import ImageReadError, SliceError, Slices, read_image, read_images

if TYPE_CHECKING:  # the network and the suite load torch: only the commands that run them do
    import numpy as np

    from reconstruction.data import LoadedImage
    from reconstruction.models import LoadedModel
    from reconstruction.protocols import Protocol

__all__ = ["AuditInputs", "RunInputError", "exit_now", "inspect_model", "load_audit", "main"]


class RunInputError(ValueError):
    """Bad input to a run: a message for the user (exit 2)."""


@dataclass(frozen=True)
class AuditInputs:
    """What an audit runs on, loaded and checked."""

    model: LoadedModel
    images: list[LoadedImage]
    protocol: Protocol
    details: list[tuple[str, np.ndarray]]


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RunInputError("--device cuda was requested but no CUDA device is available")


def load_audit(
    model: Path,
    manifest: Path,
    *,
    images: Sequence[Path] = (),
    slices: str | None = None,
    protocol: str = "quick",
    details: Sequence[Path] = (),
    device: str = "cpu",
) -> AuditInputs:
    """Load an audit's network, test data (``slices`` of each volume or k-space file), protocol
    (a built-in name or a YAML file) and custom structural details; :class:`RunInputError`
    with the reason on bad input."""
    from reconstruction.models import ModelError, load
    from reconstruction.protocols import ProtocolError, load_protocol

    _check_device(device)
    try:
        loaded_protocol = load_protocol(protocol)
        selection = None if slices is None else Slices(slices)
        loaded_images = [image for path in images for image in read_images(path, slices=selection)]
        loaded_details = [(path.stem, read_image(path).array) for path in details]
        loaded = load(model, manifest, device=device)
    except SliceError as exc:
        raise RunInputError(f"--slices: {exc}") from exc
    except (ProtocolError, ImageReadError, ModelError, ExpansionError) as exc:
        raise RunInputError(str(exc)) from exc
    return AuditInputs(loaded, loaded_images, loaded_protocol, loaded_details)


def inspect_model(model: Path, manifest: Path, device: str = "cpu") -> dict[str, Any]:
    """Load, adapt and validate a network: its summary (format, sha256, gradient access,
    parity error, inputs, fixed size); :class:`RunInputError` when it is refused."""
    from reconstruction.models import ModelError, load

    _check_device(device)
    try:
        summary: dict[str, Any] = load(model, manifest, device=device).summary()
    except (ModelError, ExpansionError) as exc:
        raise RunInputError(str(exc)) from exc
    return summary


def json_progress(stage: str, done: int, total: int) -> None:
    """One JSON line per update on stderr (read by the service's worker)."""
    line = json.dumps({"progress": {"stage": stage, "done": done, "total": total}})
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _audit(args: argparse.Namespace) -> None:
    from reconstruction.figure_data import write_figure_data
    from reconstruction.suite import TESTS, run_suite

    unknown = [name for name in args.only if name not in TESTS]
    if unknown:
        raise RunInputError(f"--only {unknown[0]!r}: the tests are {', '.join(TESTS)}")
    inputs = load_audit(
        args.model,
        args.manifest,
        images=args.images,
        slices=args.slices,
        protocol=args.protocol,
        device=args.device,
    )
    try:
        result = run_suite(
            inputs.model,
            inputs.images,
            inputs.protocol,
            device=args.device,
            progress=json_progress,
            details=inputs.details,
            only=args.only or None,
            unit=args.unit,
            part=args.part,
        )
    except ValueError as exc:
        raise RunInputError(str(exc)) from exc
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result.to_json(), indent=2))
    write_figure_data(result.truth, result.tests, args.out)


def _inspect(args: argparse.Namespace) -> None:
    summary = inspect_model(args.model, args.manifest, args.device)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


def _images(args: argparse.Namespace) -> None:
    from reconstruction.image_sets import Refused, summarise

    try:
        entries = summarise(Path.cwd(), args.files, args.slices)
    except Refused as exc:
        refused = {"refused": {"field": exc.field, "message": exc.message}}
        sys.stdout.write(json.dumps(refused) + "\n")
        raise RunInputError(exc.message) from exc
    sys.stdout.write(json.dumps({"entries": [e.to_json() for e in entries]}) + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reconstruction.run", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="run an audit: results.json and figure data")
    inspect = commands.add_parser("inspect", help="validate a network and print its summary")
    images = commands.add_parser(
        "images", help="read an image set (files in the working folder) and print its entries"
    )
    images.add_argument("files", nargs="+", help="file names in the working folder, in order")
    images.add_argument("--slices", default=None)
    images.set_defaults(run=_images)
    for command in (audit, inspect):
        command.add_argument("model", type=Path)
        command.add_argument("--manifest", type=Path, required=True)
        command.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    audit.add_argument("--images", type=Path, action="append", default=[])
    audit.add_argument("--slices", default=None)
    audit.add_argument("--protocol", default="quick")
    audit.add_argument("--only", action="append", default=[], help="run this test only")
    audit.add_argument(
        "--unit", type=int, default=None, help="run that unit of the images (with one --only)"
    )
    audit.add_argument(
        "--part",
        default=None,
        help="run that part of the test on the unit (with --unit; perturbation: a threat model)",
    )
    audit.add_argument("--out", type=Path, required=True)
    audit.set_defaults(run=_audit)
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; 0 on success, 2 on bad input (``Error: <message>`` on stderr)."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except RunInputError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 2
    return 0


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once, its streams flushed and the interpreter's
    teardown skipped: with torch, onnx and the converters loaded that teardown takes 1.6 to
    1.9 s (measured after an ``inspect`` of the AUTOMAP reference, a fifth of the run) and
    frees nothing that the process's end does not. Every file a command writes is closed
    when it returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
