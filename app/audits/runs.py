"""One run of the science in the sandbox: the audit's verified inputs copied into a job folder,
``python -m reconstruction.run audit`` run in the jail (:func:`app.sandbox.run_science`), and
one intake of what it wrote (:func:`intake`), for whole audits and shards alike: the worker
takes a bounded ``results.json`` and the figures' arrays (regular files), and draws the figures
from those arrays in a process of its own under the jail's limits (:meth:`Outputs.draw`), so
that nothing the run wrote is parsed beyond its results in the worker itself."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.db import session_factory
from app.networks.service import materialise, safe_name
from app.orm import Audit, ImageSet, Network
from app.sandbox import (
    SandboxUnavailable,
    describe_failure,
    run_limited,
    run_science,
    sanitise,
)
from app.settings import get_settings
from app.storage import Store
from reconstruction.figure_data import ARRAYS, STRUCTURE
from reconstruction.results import RESULTS_SCHEMA, ResultsError, checked
from reconstruction.suite import parse_shard

__all__ = [
    "MAX_RESULTS_BYTES",
    "Outputs",
    "RunFailed",
    "draw",
    "image_args",
    "intake",
    "message",
    "run_jailed",
]

#: the most a jailed run's results.json may weigh
MAX_RESULTS_BYTES = 64 * 2**20


class RunFailed(Exception):
    """A jailed run failed, or what it wrote was refused: the message is the service's own
    words (a fixed vocabulary and sanitised excerpts), fit to store as the audit's error."""


@dataclass(frozen=True)
class Outputs:
    """What the intake took from a jailed run: its results document, and the folder holding
    the figures' arrays (checked as files, read only by :meth:`draw`'s process)."""

    results: dict[str, Any]
    out: Path

    def draw(self, figures_dir: Path) -> dict[str, Path]:
        """Draw the run's figures (PNGs) into ``figures_dir`` (:func:`draw`)."""
        return draw([self.out], figures_dir)


def draw(runs: list[Path], figures_dir: Path) -> dict[str, Path]:
    """Draw an audit's figures (PNGs) from its runs' outputs (one whole run, or a fanned-out
    audit's shards, each folder holding its results.json and figure arrays) into
    ``figures_dir``, a folder of the worker's own: ``python -m app.report.figures`` under the
    jail's CPU, memory, file-size and time limits (the arrays are the untrusted runs'); name ->
    path, in the drawing's order."""
    settings = get_settings()
    command = [sys.executable, "-m", "app.report.figures", str(figures_dir), *map(str, runs)]
    result = run_limited(
        command, timeout=settings.audit_time_limit, limits=settings.sandbox_limits()
    )
    if result.returncode != 0:
        raise RunFailed(describe_failure(result, "the figures could not be drawn"))
    try:
        drawn = json.loads(result.stdout)
        paths = {str(name): figures_dir / Path(str(file)).name for name, file in drawn.items()}
    except (ValueError, AttributeError) as exc:
        raise RunFailed("the figures could not be drawn: no list of figures") from exc
    for path in paths.values():
        if path.is_symlink() or not path.is_file():
            raise RunFailed(f"the figures could not be drawn: {path.name} is missing")
    return paths


def run_jailed(
    store: Store,
    audit_id: str,
    workdir: Path,
    shard: str | None,
    on_progress: Callable[[dict[str, Any]], None],
) -> Outputs:
    """Copy the verified inputs into ``workdir``, run the audit (``shard``: that shard only, a
    test, a unit of its images or a part of it there,
    :func:`reconstruction.suite.parse_shard`) in the sandbox and take in its outputs. Raises
    :class:`RunFailed` with the jail's message when the run fails or wrote something the
    intake refuses."""
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
    if shard is not None:
        args += parse_shard(shard).args()
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
        raise RunFailed(describe_failure(result, "the audit run failed"))
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
    size, a results document that follows the schema, :func:`reconstruction.results.checked`)
    and the figures' arrays (regular files; their content is read by
    :meth:`Outputs.draw`'s process only). Anything else is ignored; a missing, oversized or
    malformed output raises :class:`RunFailed`."""
    path = out / "results.json"
    if path.is_symlink() or not path.is_file():
        raise RunFailed("the audit run did not write results.json as a regular file")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise RunFailed(f"the audit run wrote a results.json over {MAX_RESULTS_BYTES} bytes")
    try:
        results = json.loads(path.read_text())
    except ValueError as exc:
        raise RunFailed("the audit run wrote a results.json that is not JSON") from exc
    try:
        checked(results)
    except ResultsError as exc:
        raise RunFailed(
            f"the audit run wrote a results.json that is not a results document ({RESULTS_SCHEMA})"
        ) from exc
    for name in (STRUCTURE, ARRAYS):
        if (out / name).is_symlink() or not (out / name).is_file():
            raise RunFailed(f"the audit run did not write {name} as a regular file")
    return Outputs(results, out)


def _inside(path: Path, workdir: Path) -> str:
    return path.relative_to(workdir).as_posix()


def message(exc: Exception) -> str:
    """What an audit's failure says: the jail's own reduced message, else the exception's type
    and a sanitised excerpt (no paths, no long tokens)."""
    if isinstance(exc, RunFailed | SandboxUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {sanitise(str(exc))}"
