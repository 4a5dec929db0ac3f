"""One run of the science in the sandbox: the audit's verified inputs copied into a job folder,
``recon-audit audit --no-pdf`` run in the jail (:func:`app.sandbox.run_science`), and one intake of
what it wrote (:func:`intake`), for whole audits and shards alike: the worker trusts nothing of
the job folder but a bounded ``results.json`` and bounded PNG figures, regular files all."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.db import session_factory
from app.networks.service import materialise, safe_name
from app.orm import Audit, ImageSet, Network
from app.report import write_figures
from app.sandbox import SandboxUnavailable, describe_failure, run_science, sanitise
from app.settings import get_settings
from app.storage import Store
from reconstruction.figure_data import FigureData, FigureDataError, read_figure_data

__all__ = ["MAX_RESULTS_BYTES", "Outputs", "image_args", "intake", "message", "run_jailed"]

#: the most a jailed run's results.json may weigh
MAX_RESULTS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Outputs:
    """What the intake took from a jailed run: its results document and its figures' arrays."""

    results: dict[str, Any]
    figure_data: FigureData

    def draw(self, figures_dir: Path) -> dict[str, Path]:
        """Draw the run's figures (PNGs) into ``figures_dir``, a folder of the worker's own."""
        tests = self.figure_data.test_results(self.results)
        return write_figures(tests, self.figure_data.truth, figures_dir)


def run_jailed(
    store: Store,
    audit_id: str,
    workdir: Path,
    test: str | None,
    on_progress: Callable[[dict[str, Any]], None],
) -> Outputs:
    """Copy the verified inputs into ``workdir``, run the audit (``test``: that test only) in
    the sandbox and take in its outputs. Raises ``RuntimeError`` with the jail's message when
    the run fails or wrote something the intake refuses."""
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get_one(Audit, audit_id)
        network = session.get_one(Network, audit.network_id)
        image_set = None if audit.image_set == "builtin" else session.get(ImageSet, audit.image_set)
        protocol_yaml = audit.protocol_yaml
    (workdir / "model").mkdir()
    model, manifest = materialise(store, network, workdir / "model")
    (workdir / "protocol.yaml").write_text(protocol_yaml)
    # paths relative to the job's folder, which is the jail's working directory
    args = ["audit", _inside(model, workdir), "--manifest", _inside(manifest, workdir)]
    args += ["--protocol", "protocol.yaml"]
    if image_set is not None:
        args += image_args(store, image_set.images, workdir)
    args += ["--device", settings.device, "--out", "out"]
    args += ["--only", test] if test is not None else []
    result = run_science(
        args,
        workdir=workdir,
        timeout=settings.audit_time_limit,
        limits=settings.sandbox_limits(),
        bwrap=settings.sandbox_bwrap,
        gpu=settings.device.startswith("cuda"),
        on_progress=on_progress,
    )
    if result.returncode != 0:
        raise RuntimeError(describe_failure(result, "the audit run failed"))
    return intake(workdir / "out")


def image_args(store: Store, images: list[dict[str, Any]], workdir: Path) -> list[str]:
    """Copy an image set's files out of the store into ``workdir/images`` (a DICOM series: its
    files in a folder of its own, read as one volume) and return the run's ``--images`` and
    ``--slices`` arguments, relative to ``workdir``."""
    args = []
    (workdir / "images").mkdir()
    for image in images:
        target = workdir / "images" / safe_name(image["name"], "images")
        if "series" in image:
            target.mkdir()
            for member in image["series"]:
                store.copy_out(member["sha256"], target / safe_name(member["name"], "images"))
        else:
            store.copy_out(image["sha256"], target)
        args += ["--images", _inside(target, workdir)]
    # one selection for the whole set (recorded with each of its entries)
    selection = next((i["slices"] for i in images if "slices" in i), None)
    return args if selection is None else [*args, "--slices", selection]


def intake(out: Path) -> Outputs:
    """The outputs of a jailed run in ``out``: ``results.json`` (a regular file of bounded
    size, a JSON object) and the figures' arrays (bounded, numeric, no pickles). Anything else
    is ignored; a missing, oversized or malformed output raises ``RuntimeError``."""
    path = out / "results.json"
    if path.is_symlink() or not path.is_file():
        raise RuntimeError("the audit run did not write results.json as a regular file")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise RuntimeError(f"the audit run wrote a results.json over {MAX_RESULTS_BYTES} bytes")
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or not isinstance(results.get("tests"), dict):
        raise RuntimeError("the audit run wrote a results.json that is not a results document")
    try:
        figure_data = read_figure_data(out)
    except FigureDataError as exc:
        raise RuntimeError(f"the audit run's figure data was refused: {exc}") from exc
    return Outputs(results, figure_data)


def _inside(path: Path, workdir: Path) -> str:
    return path.relative_to(workdir).as_posix()


def message(exc: Exception) -> str:
    """What an audit's failure says: the jail's own reduced message, else the exception's type
    and a sanitised excerpt (no paths, no long tokens)."""
    if isinstance(exc, RuntimeError | SandboxUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {sanitise(str(exc))}"
