"""``run_suite``: the three instability tests on a set of images under one protocol.

Pure science: no web, database or templating imports. The CLI (``recon-audit audit``) calls
:func:`run_suite` and renders its :class:`SuiteResult`; the service's jailed runs call it
through ``python -m reconstruction.run audit``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import reconstruction
from reconstruction.data import (
    LoadedImage,
    array_sha256,
    builtin_images,
    resize_image,
    scale_to_range,
)
from reconstruction.instability.common import AuditData, Subject, TestResult, Unit, units
from reconstruction.instability.registry import BY_NAME, REGISTRY, TESTS, InstabilityTest
from reconstruction.models.manifest import ESPIRIT
from reconstruction.operators import MultiCoilMRI
from reconstruction.protocols import METRIC_CONVENTIONS, Protocol
from reconstruction.results import RESULTS_SCHEMA, checked

__all__ = [
    "EMPTY_UNIT",
    "NOT_IN_PROTOCOL",
    "RESULTS_SCHEMA",
    "SHARD_SKIP",
    "TESTS",
    "PreparedData",
    "ShardKey",
    "SuiteResult",
    "isolation",
    "merge_figures",
    "merge_results",
    "parse_shard",
    "prepare_data",
    "prepare_images",
    "run_suite",
    "shard_names",
]

#: (stage, done, total) -> None
Progress = Callable[[str, int, int], None]
#: the reason a test carries in a shard that does not run it
SHARD_SKIP = "run in another shard of this audit"
#: the reason a shard's test carries when its unit lies beyond the audit's images
EMPTY_UNIT = "no image in this unit of the audit"
#: the reason a test carries that the protocol does not run (in every shard)
NOT_IN_PROTOCOL = "not part of this protocol"
#: a test's reasons in a shard that did not run it
_NOT_RUN = (SHARD_SKIP, EMPTY_UNIT, NOT_IN_PROTOCOL)


@dataclass
class SuiteResult:
    protocol: Protocol
    model: dict[str, Any]
    images: list[dict[str, Any]]
    #: user-supplied structural details (name, SHA-256 of the array)
    details: list[dict[str, Any]]
    tests: dict[str, TestResult]
    environment: dict[str, Any]
    timings: dict[str, float]
    created: str
    #: the prepared ground-truth images ``[B, H, W]`` (for figures)
    truth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    #: multi-coil MRI: the coil maps in use (``source``: shipped, espirit, birdcage)
    sensitivities: dict[str, Any] | None = None
    #: a shard's run of one unit: ``index``, ``of``, ``start``, ``stop`` (and ``part``: the
    #: one part of the test it ran there)
    unit: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The results document (:class:`reconstruction.results.Results`), checked against
        the schema."""
        return checked(
            {
                "schema": RESULTS_SCHEMA,
                "created": self.created,
                "protocol": self.protocol.identity(),
                "protocol_document": self.protocol.model_dump(mode="json"),
                "model": self.model,
                "images": self.images,
                "custom_details": self.details,
                "measurements": "measured"
                if any(i.get("measured") for i in self.images)
                else "simulated",
                "sensitivities": self.sensitivities,
                "metric_convention": {
                    "name": self.protocol.metrics.convention,
                    "description": METRIC_CONVENTIONS[self.protocol.metrics.convention],
                },
                "tests": {name: result.as_dict() for name, result in self.tests.items()},
                "verdicts": {name: result.verdict for name, result in self.tests.items()},
                "environment": self.environment,
                "timings_seconds": self.timings,
                **({} if self.unit is None else {"unit": self.unit}),
            }
        )


def _image_record(image: LoadedImage, array: np.ndarray) -> dict[str, Any]:
    return {
        "source": image.source,
        "sha256": array_sha256(np.asarray(array, dtype=np.float32)),
        "original_shape": list(np.asarray(image.array).shape),
        "metadata": {k: v for k, v in image.metadata.items() if isinstance(v, str | int | float)},
    }


def _identity(document: dict[str, Any], key: str) -> object:
    """What must agree between shards of one audit (timings may differ)."""
    if key == "model":
        return document["model"]["sha256"], document["model"].get("manifest_sha256")
    if key == "images":
        return [image["sha256"] for image in document["images"]]
    return document[key]


def merge_results(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results document from the shards of an audit (each ran one test, or one unit of
    its images, with ``run_suite(only=..., unit=...)``): a test run whole is taken from its
    shard; a test run in units is merged from all of them by its registry entry, as
    :func:`run_suite` merges them in one process. The shards must share the protocol, the
    model and the images."""
    if not documents:
        raise ValueError("no shard to merge")
    merged = copy.deepcopy(dict(documents[0]))
    merged.pop("unit", None)
    for key in ("protocol", "model", "images"):
        if any(_identity(doc, key) != _identity(merged, key) for doc in documents):
            raise ValueError(f"the shards differ in {key!r}: they are not one audit")
    merged["timings_seconds"] = {}
    merged["shards"] = []
    for doc in documents:
        names = [name for name, test in doc["tests"].items() if test.get("reason") not in _NOT_RUN]
        shard: dict[str, Any] = {"tests": names}
        if "unit" in doc:
            shard["unit"] = doc["unit"]["index"]
            if "part" in doc["unit"]:
                shard["part"] = doc["unit"]["part"]
        merged["shards"].append(
            {**shard, "created": doc["created"], "environment": doc["environment"]}
        )
    for name, found in _ran(documents).items():
        docs = [documents[k] for k in found]
        block = _merged_test(name, docs).as_dict()
        merged["tests"][name] = block
        merged["verdicts"][name] = block["verdict"]
        timings = [d["timings_seconds"][name] for d in docs if name in d["timings_seconds"]]
        if timings:
            merged["timings_seconds"][name] = round(sum(timings), 3)
    missing = [n for n, t in merged["tests"].items() if t.get("reason") in (SHARD_SKIP, EMPTY_UNIT)]
    if missing:
        raise ValueError(f"no shard ran {', '.join(missing)}")
    return checked(merged)


def _ran(documents: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Per test, the shards (indices into ``documents``) that ran it on some images: the one
    that ran it whole, or its units by index (a unit's parts side by side)."""
    ran: dict[str, list[int]] = {}
    for k, doc in enumerate(documents):
        for name, test in doc["tests"].items():
            if test.get("reason") not in _NOT_RUN:
                ran.setdefault(name, []).append(k)
    return {
        name: sorted(found, key=lambda k: int(documents[k].get("unit", {}).get("index", 0)))
        for name, found in ran.items()
    }


def _merged_test(
    name: str, docs: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
) -> TestResult:
    """Test ``name`` from the shards that ran it (:func:`_ran`'s order): the one that ran it
    whole, or every unit of it, merged (``figures``: their figure arrays, merged too); a unit
    run in parts (:attr:`InstabilityTest.parts`) is merged from them first."""
    if any("unit" not in doc for doc in docs):
        if len(docs) > 1:
            raise ValueError(f"{name} was run by {len(docs)} shards, not once")
        return _taken(name, docs[0]["tests"][name], None if figures is None else figures[0])
    test = BY_NAME[name]
    arrays = [{} for _ in docs] if figures is None else list(figures)
    by_unit: dict[int, list[int]] = {}
    for k, doc in enumerate(docs):
        by_unit.setdefault(int(doc["unit"]["index"]), []).append(k)
    of = {int(d["unit"]["of"]) for d in docs}
    if len(of) != 1 or sorted(by_unit) != list(range(of.pop())):
        raise ValueError(f"the units of {name} are not each run once: {sorted(by_unit)}")
    parts = test.parts(Protocol.model_validate(docs[0]["protocol_document"]))
    units_: list[TestResult] = []
    for index in sorted(by_unit):
        found = by_unit[index]
        ran = {docs[k]["unit"].get("part"): k for k in found}
        if len(found) == 1 and None in ran:
            k = found[0]
            units_.append(_taken(name, docs[k]["tests"][name], arrays[k]))
            continue
        if len(ran) != len(found) or set(ran) != set(parts) or test.merge_parts is None:
            labels = [docs[k]["unit"].get("part") for k in found]
            raise ValueError(f"unit {index} of {name} is not run once in its parts: {labels}")
        order = [ran[part] for part in parts]
        units_.append(
            test.merge_parts([docs[k]["tests"][name] for k in order], [arrays[k] for k in order])
        )
    if len(units_) == 1:
        return units_[0]
    # through JSON, as run_suite hands its units' blocks to the merge
    blocks = [json.loads(json.dumps(u.as_dict())) for u in units_]
    return test.merge(blocks, None if figures is None else [u.figures for u in units_])


def _taken(name: str, block: dict[str, Any], arrays: dict[str, Any] | None) -> TestResult:
    """A test's result as a shard stored it (its block of results.json, its figure arrays)."""
    numbers = {k: v for k, v in block.items() if k not in ("verdict", "reason")}
    return TestResult(name, block["verdict"], block["reason"], numbers, arrays or {})


def merge_figures(
    documents: Sequence[dict[str, Any]], figures: Sequence[dict[str, dict[str, Any]]]
) -> dict[str, TestResult]:
    """The tests of a fanned-out audit with their figure arrays: ``documents``, the shards'
    results, and ``figures``, each shard's figure arrays by test
    (:attr:`reconstruction.figure_data.FigureData.tests`); a test run in units is merged as
    :func:`merge_results` merges its numbers."""
    return {
        name: _merged_test(
            name, [documents[k] for k in found], [figures[k].get(name, {}) for k in found]
        )
        for name, found in _ran(documents).items()
    }


def shard_names(protocol: Protocol, n_images: int) -> list[str]:
    """The shards an audit of ``n_images`` images fans out to, in the report's order: per test
    of the protocol its name, or, for a protocol decomposed in units of the images
    (``images.per_unit``), one ``test/unit`` per unit; a test that splits into parts
    (:attr:`InstabilityTest.parts`) one ``test/unit@part`` per unit and part
    (:func:`parse_shard`)."""
    count = len(units(protocol, n_images))
    names = []
    for test in REGISTRY:
        if test.config(protocol) is None:
            continue
        parts = test.parts(protocol)
        if parts:
            names += [f"{test.name}/{k}@{part}" for k in range(count) for part in parts]
        elif protocol.images.per_unit is None:
            names.append(test.name)
        else:
            names += [f"{test.name}/{k}" for k in range(count)]
    return names


class ShardKey(NamedTuple):
    """A shard's test, unit (None: the test on every image) and part (None: the whole test)."""

    test: str
    unit: int | None = None
    part: str | None = None

    def args(self) -> list[str]:
        """The shard's options of ``python -m reconstruction.run audit``."""
        unit = [] if self.unit is None else ["--unit", str(self.unit)]
        return ["--only", self.test, *unit, *([] if self.part is None else ["--part", self.part])]

    def title(self) -> str:
        """The shard in words, for progress and failure messages."""
        where = [] if self.unit is None else [f"unit {self.unit} of the images"]
        if self.part is not None:
            where.append(f"part {self.part}")
        return f"{self.test} test" + (f" ({', '.join(where)})" if where else "")


def parse_shard(name: str) -> ShardKey:
    """A shard's coordinates: ``perturbation/3`` is unit 3 of the perturbation test,
    ``perturbation/3@image`` its image-domain part there; ValueError for anything else."""
    where, _, part = name.partition("@")
    test, _, unit = where.partition("/")
    if test not in TESTS or (unit and not unit.isdigit()) or ("@" in name and not (unit and part)):
        raise ValueError(f"not a shard: {name!r}")
    return ShardKey(test, int(unit) if unit else None, part or None)


def prepare_images(
    images: Sequence[LoadedImage], size: tuple[int, int], intensity_range: tuple[float, float]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Real ground truths at the network's size, scaled to its intensity range (magnitude of
    complex images), and a record per image (source, SHA-256 of the prepared array)."""
    prepared = prepare_data(images, size, intensity_range)
    return prepared.truth, prepared.records


@dataclass
class PreparedData:
    """The audit's images on the network's grid: ``truth`` ``[B, H, W]``; ``kspace``: each
    measured image's fully sampled k-space ``[(C,) H, W]`` scaled like its truth (``None`` for
    the others); ``volume_max`` ``[B]``: each truth's volume maximum in the truth's scale."""

    truth: np.ndarray
    records: list[dict[str, Any]]
    kspace: list[np.ndarray | None]
    volume_max: np.ndarray


def prepare_data(
    images: Sequence[LoadedImage], size: tuple[int, int], intensity_range: tuple[float, float]
) -> PreparedData:
    """:func:`prepare_images`, and measured k-space: a measured image (``kspace`` set) is
    fitted to ``size`` (:func:`reconstruction.measured.fit_kspace`, never resampled) and its
    truth and k-space are scaled by one factor, its maximum to the range's top (the range must
    start at 0: k-space is linear)."""
    from reconstruction.measured import fit_kspace

    arrays, records, peaks = [], [], []
    kspaces: list[np.ndarray | None] = []
    lo, hi = (float(v) for v in intensity_range)
    for image in images:
        if image.kspace is None:
            a = np.asarray(image.array)
            a = np.abs(a) if np.iscomplexobj(a) else a
            prepared = scale_to_range(resize_image(a, size), intensity_range).astype(np.float32)
            record = _image_record(image, prepared)
            kspaces.append(None)
            peaks.append(float(prepared.max()))
        else:
            if lo != 0.0:
                raise ValueError(
                    f"field 'intensity_range': measured k-space ({image.source}) can only be "
                    f"scaled to a range starting at 0, not {list(intensity_range)}"
                )
            kspace, truth, grid = fit_kspace(image, size)
            top = float(truth.max())
            if top == 0.0:
                raise ValueError(f"{image.source}: the k-space is zero")
            scale = hi / top
            prepared = (truth * scale).astype(np.float32)
            kspaces.append((kspace * scale).astype(np.complex64))
            volume = max(float(image.metadata.get("max", top)), top)
            peaks.append(volume * scale)
            record = {
                **_image_record(image, prepared),
                "measured": True,
                "grid": grid,
                "scale": scale,
                "kspace_sha256": array_sha256(image.kspace),
                "kspace_shape": list(image.kspace.shape),
            }
        arrays.append(prepared)
        records.append(record)
    return PreparedData(np.stack(arrays), records, kspaces, np.asarray(peaks, dtype=np.float32))


def _measured_data(
    model: Subject, prepared: PreparedData, device: str
) -> tuple[Subject, AuditData, dict[str, Any] | None]:
    """The subject with the coil maps in use (ESPIRiT: estimated from a measured slice), the
    tests' data (k-space for every image when one is measured: simulated through the maps for
    the others), and the record of the maps."""
    from reconstruction import coils

    manifest = model.manifest
    measured = [k for k in prepared.kspace if k is not None]
    op = model.operator
    maps_record = None
    subject = model
    if measured and manifest.modality == "ct":
        raise ValueError("measured k-space is for MRI networks; this one is 'ct'")
    wanted = 3 if manifest.modality == "mri-multicoil" else 2
    for k, record in zip(prepared.kspace, prepared.records, strict=True):
        if k is not None and k.ndim != wanted:
            kind = "multi-coil [C, H, W]" if wanted == 3 else "single-coil [H, W]"
            raise ValueError(
                f"{record['source']}: k-space of shape {list(k.shape)}; modality "
                f"'{manifest.modality}' needs {kind} k-space"
            )
    if isinstance(op, MultiCoilMRI):
        source = manifest.sampling.sensitivities
        if source == ESPIRIT:
            if not measured:
                raise ValueError(
                    "field 'sampling.sensitivities': 'espirit' estimates the maps from measured "
                    "multi-coil k-space: audit with an HDF5 file"
                )
            middle = len(measured) // 2
            maps, how = coils.espirit_maps(measured[middle], op.mask.numpy())
            where = [i for i, k in enumerate(prepared.kspace) if k is not None][middle]
            op = MultiCoilMRI(op.mask, maps)
            subject = copy.copy(model)
            subject.operator = op
            maps_record = coils.maps_record(
                "espirit", op.sensitivities.numpy(), **how, slice=prepared.records[where]["source"]
            )
        elif source is not None:
            maps_record = coils.maps_record("shipped", op.sensitivities.numpy(), file=source)
        else:
            maps_record = coils.maps_record("birdcage", op.sensitivities.numpy())
        for k, record in zip(prepared.kspace, prepared.records, strict=True):
            if k is not None and k.shape[0] != op.coils:
                raise ValueError(
                    f"field 'sampling.coils': {record['source']} has {k.shape[0]} coils, the "
                    f"network's maps {op.coils}"
                )
    volume_max = torch.from_numpy(prepared.volume_max).to(device)
    if not measured:
        return subject, AuditData(volume_max=volume_max), maps_record
    from reconstruction.measured import simulated_kspace

    full = [
        simulated_kspace(t, op) if k is None else k
        for t, k in zip(prepared.truth, prepared.kspace, strict=True)
    ]
    data = AuditData(kspace=torch.from_numpy(np.stack(full)).to(device), volume_max=volume_max)
    return subject, data, maps_record


def _environment(device: str) -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in ("torch", "numpy", "scipy", "onnx", "onnxruntime", "onnx2pytorch", "onnx2torch"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    hardware = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return {
        "recon_audit": reconstruction.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "device": device,
        "hardware": hardware,
        "isolation": isolation(),
        "deterministic_seed_source": "protocol.seed",
    }


def isolation() -> dict[str, Any]:
    """How the run is confined, as seen from inside (Linux ``/proc/self/status``): its uid, its
    pid in its PID namespace, whether it may gain privileges, its seccomp mode, and whether it
    holds any capability. Empty where there is no such file."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    seccomp = {"0": "none", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""), "unknown")
    return {
        "uid": int(status["Uid"].split()[1]),
        "pid": int(status["NSpid"].split()[-1]) if "NSpid" in status else os.getpid(),
        "no_new_privileges": status.get("NoNewPrivs") == "1",
        "seccomp": seccomp,
        "capabilities": int(status.get("CapEff", "0"), 16) != 0,
    }


def run_suite(
    model: Subject,
    images: Sequence[LoadedImage] | None,
    protocol: Protocol,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    details: Sequence[tuple[str, np.ndarray]] = (),
    only: Collection[str] | None = None,
    unit: int | None = None,
    part: str | None = None,
) -> SuiteResult:
    """Run the protocol's tests on ``model`` (a :class:`reconstruction.models.LoadedModel` or
    any :class:`~reconstruction.instability.common.Subject`) and the given images (default: the
    built-in set), at most ``protocol.images.max_images`` of them, in order. ``details``:
    user-supplied structural details ``(name, image or mask)`` added to the standard ones.
    ``only``: run just these tests (a shard of an audit that fans out across workers); the
    others are reported as skipped, to be merged from their own shards. ``unit``: run only
    that unit of the images (:func:`reconstruction.instability.common.units`) of the one test
    ``only`` names (a shard of an audit fanned out per unit); without it, every unit is run
    and the units merged (the same numbers, however the audit is run). ``part``: run only that
    part of the test on the unit (:attr:`InstabilityTest.parts`; test 1: a threat model)."""
    unknown = set(only or ()) - set(TESTS)
    if unknown:
        raise ValueError(f"unknown test(s) {sorted(unknown)}: choose from {', '.join(TESTS)}")
    manifest = model.manifest
    protocol.check_image_size(manifest.image_size)
    chosen = list(images) if images else builtin_images(max(manifest.image_size))
    chosen = chosen[: protocol.images.max_images]
    if not chosen:
        raise ValueError("no test image to audit")
    prepared = prepare_data(chosen, manifest.image_size, manifest.intensity_range)
    truth_np, records = prepared.truth, prepared.records
    model, data, maps_record = _measured_data(model, prepared, device)
    truth = torch.from_numpy(truth_np).to(device)
    torch.manual_seed(protocol.seed)
    # subnormal floats (below 1e-38) flushed to zero: the unrolled baselines' backward passes
    # meet them under larger perturbations and run about ten times slower on them (x86 CPUs)
    torch.set_flush_denormal(True)
    parts = units(protocol, len(truth_np))
    if unit is not None and (only is None or len(only) != 1):
        raise ValueError("a unit of the images is run for one test: give it with only")
    if part is not None:
        if unit is None or only is None:
            raise ValueError("a part of a test is run on one unit: give the test and the unit")
        wanted = BY_NAME[next(iter(only))]
        if part not in wanted.parts(protocol):
            raise ValueError(
                f"no part {part!r} of {wanted.name} in this protocol: "
                f"{', '.join(wanted.parts(protocol)) or 'it runs whole'}"
            )
    running = parts if unit is None else [u for u in parts if u.index == unit]
    results: dict[str, TestResult] = {}
    timings: dict[str, float] = {}
    for test in REGISTRY:
        name = test.name
        if test.config(protocol) is None:
            results[name] = TestResult(name, "skipped", NOT_IN_PROTOCOL)
            continue
        if only is not None and name not in only:
            results[name] = TestResult(name, "skipped", SHARD_SKIP)
            continue
        if not running:
            results[name] = TestResult(name, "skipped", EMPTY_UNIT)
            continue
        done, total = 0, test.steps(protocol, part) * len(running)

        def step(n: int, stage: str = name, total: int = total) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(stage, min(done, total), total)

        start = time.perf_counter()
        pieces = [
            _run_unit(test, model, truth, data, protocol, details, u, step, part) for u in running
        ]
        if len(pieces) == 1:
            results[name] = pieces[0]
        else:
            # through JSON, as a fanned-out audit's shards hand their blocks to the merge
            blocks = [json.loads(json.dumps(piece.as_dict())) for piece in pieces]
            results[name] = test.merge(blocks, [piece.figures for piece in pieces])
        timings[name] = round(time.perf_counter() - start, 3)
        if progress is not None:
            progress(name, total, total)
    return SuiteResult(
        protocol=protocol,
        model=model.summary(),
        images=records,
        details=[{"name": name, "sha256": array_sha256(a)} for name, a in details],
        tests=results,
        environment=_environment(device),
        timings=timings,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        truth=truth_np,
        sensitivities=maps_record,
        unit=None
        if unit is None
        else {
            "index": unit,
            "of": len(parts),
            "start": running[0].start if running else len(truth_np),
            "stop": running[0].stop if running else len(truth_np),
            **({} if part is None else {"part": part}),
        },
    )


def _run_unit(
    test: InstabilityTest,
    model: Subject,
    truth: torch.Tensor,
    data: AuditData,
    protocol: Protocol,
    details: Sequence[tuple[str, np.ndarray]],
    unit: Unit,
    step: Callable[[int], None],
    part: str | None = None,
) -> TestResult:
    """``test`` (or that ``part`` of it) on the unit's images (and their measured k-space and
    data ranges)."""
    images = slice(unit.start, unit.stop)
    whole = unit.start == 0 and unit.stop == truth.shape[0]
    unit_data = (
        data
        if whole
        else AuditData(
            kspace=None if data.kspace is None else data.kspace[images],
            volume_max=None if data.volume_max is None else data.volume_max[images],
        )
    )
    return test.run(
        model,
        truth[images],
        protocol,
        data=unit_data,
        details=details,
        unit=unit,
        progress=step,
        part=part,
    )
