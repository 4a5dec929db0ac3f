from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import yaml

from reconstruction import metrics
from reconstruction.data import LoadedImage, Slices, read_images, shepp_logan
from reconstruction.instability import registry
from reconstruction.instability.common import BaselineSubject, Unit, units
from reconstruction.models import Manifest, build_operator
from reconstruction.operators import birdcage_sensitivities
from reconstruction.protocols import Protocol, load_protocol, parse_protocol
from reconstruction.suite import (
    EMPTY_UNIT,
    NOT_IN_PROTOCOL,
    RESULTS_SCHEMA,
    SHARD_SKIP,
    merge_figures,
    merge_results,
    parse_shard,
    run_suite,
    shard_names,
)
from tests.reconstruction.conftest import SMALL_PROTOCOL, Leaky, manifest, subject
from tests.reconstruction.measured_files import write_fastmri


def test_the_baseline_audited_as_a_network_is_stable_on_all_three_tests(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    m = manifest()
    op = build_operator(m, mask_dir)
    control = BaselineSubject(m, op, None, small_protocol.baseline)
    result = run_suite(control, images, small_protocol)
    verdicts = {name: t.verdict for name, t in result.tests.items()}
    assert verdicts == {"perturbation": "stable", "structural": "stable", "sampling": "stable"}, {
        name: t.reason for name, t in result.tests.items()
    }


def test_results_json_shape_and_progress(mask_dir: Path, images: list[LoadedImage]) -> None:
    document = yaml.safe_load(SMALL_PROTOCOL)
    document["images"]["max_images"] = 1
    document["perturbation"]["budget"]["iterations"] = 2
    document["perturbation"]["pnas"] = None
    document["structural"] = None
    document["sampling"] = None
    protocol = Protocol.model_validate(document)
    seen: list[tuple[str, int, int]] = []
    result = run_suite(
        subject(Leaky(0.0), mask_dir),
        images,
        protocol,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["schema"] == RESULTS_SCHEMA
    assert doc["protocol"] == {
        "name": "custom:small",
        "version": "1",
        "sha256": protocol.sha256,
        "builtin": False,
    }
    assert set(doc["model"]) >= {"sha256", "format", "gradient_access"}
    assert doc["tests"]["structural"] == {
        "verdict": "skipped",
        "reason": "not part of this protocol",
    }
    assert doc["tests"]["sampling"]["verdict"] == "skipped"
    assert doc["tests"]["perturbation"]["verdict"] in ("stable", "unstable", "inconclusive")
    assert len(doc["images"]) == 1
    assert len(doc["images"][0]["sha256"]) == 64
    stages = {stage for stage, _, _ in seen}
    assert stages == {"perturbation"}
    assert seen[-1][1] == seen[-1][2]
    assert doc["environment"]["packages"]["torch"]


def test_shards_merge_into_one_audit(mask_dir: Path, images: list[LoadedImage]) -> None:
    document = yaml.safe_load(SMALL_PROTOCOL)
    document["images"]["max_images"] = 1
    document["perturbation"]["budget"]["iterations"] = 2
    document["perturbation"]["pnas"] = None
    protocol = Protocol.model_validate(document)
    model = subject(Leaky(0.0), mask_dir)
    shards = [
        run_suite(model, images, protocol, only=[test]).to_json()
        for test in ("sampling", "perturbation", "structural")
    ]
    assert shards[0]["tests"]["perturbation"]["reason"] == SHARD_SKIP
    merged = merge_results(shards)
    assert set(merged["verdicts"]) == {"perturbation", "structural", "sampling"}
    assert all(t["reason"] != SHARD_SKIP for t in merged["tests"].values())
    assert merged["tests"]["sampling"] == shards[0]["tests"]["sampling"]
    assert [s["tests"] for s in merged["shards"]] == [
        ["sampling"],
        ["perturbation"],
        ["structural"],
    ]
    with pytest.raises(ValueError, match="no shard ran"):
        merge_results(shards[:2])
    other = json.loads(json.dumps(shards[1]))
    other["model"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="differ in 'model'"):
        merge_results([shards[0], other])
    with pytest.raises(ValueError, match="unknown test"):
        run_suite(model, images, protocol, only=["speed"])


MEASURED_PROTOCOL = """
name: measured
version: "1"
images: {max_images: 2}
metrics: {convention: fastmri}
perturbation: null
structural: null
sampling: {factors: [1.0, 2.0]}
"""


def _measured_manifest(folder: Path, size: int, **sampling_extra: Any) -> Manifest:
    mask = np.zeros((size, size), dtype=bool)
    mask[:, size // 2 - 8 : size // 2 + 8] = True
    mask[:, 1::4] = True
    np.save(folder / "mask.npy", mask)
    return Manifest.model_validate(
        {
            "name": "measured-net",
            "modality": "mri-multicoil",
            "image_size": [size, size],
            "sampling": {"mask": "mask.npy", "coils": 4, **sampling_extra},
        }
    )


def test_measured_kspace_audits_with_espirit_maps_and_the_fastmri_convention(
    tmp_path: Path,
) -> None:
    """A fastMRI file's truth and measurements come from the file: the RSS reference, the
    measured k-space undersampled by each mask; the maps from ESPIRiT; results.json says so."""
    path = write_fastmri(tmp_path / "knee.h5", size=64, oversample=2, coils=4, slices=3)
    protocol = parse_protocol(MEASURED_PROTOCOL)
    m = _measured_manifest(tmp_path, 64, sensitivities="espirit")
    control = BaselineSubject(m, build_operator(m, tmp_path), None, protocol.baseline)
    images = read_images(path, slices=Slices("1"))
    result = run_suite(control, images, protocol)
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["measurements"] == "measured"
    assert doc["metric_convention"]["name"] == "fastmri"
    assert "volume's maximum" in doc["metric_convention"]["description"]
    maps = doc["sensitivities"]
    assert maps["source"] == "espirit"
    assert maps["calib_width"] == 16
    assert maps["slice"].endswith("knee.h5#slice=1")
    assert [image["grid"] for image in doc["images"]] == ["reconstruction"]
    assert all(image["measured"] for image in doc["images"])
    with h5py.File(path) as f:
        reference = np.asarray(f["reconstruction_rss"][1:2])
        volume_max = float(f.attrs["max"])
    scale = np.array([image["scale"] for image in doc["images"]])
    np.testing.assert_allclose(result.truth, reference * scale[:, None, None], atol=1e-4)
    ladder = doc["tests"]["sampling"]["ladder"]
    assert {"psnr_db", "ssim", "nmse"} <= set(ladder[0]["network"])
    assert doc["verdicts"]["sampling"] == "stable", doc["tests"]["sampling"]["reason"]
    # the fastMRI PSNR's data range is the volume's maximum, in the truth's scale
    recon = torch.from_numpy(result.tests["sampling"].figures["network"][0])[None]
    peak = float(volume_max * scale[0])
    expected = metrics.psnr(recon, torch.from_numpy(result.truth[:1]), data_range=peak)
    assert ladder[0]["network"]["psnr_db"][0] == pytest.approx(float(expected), abs=1e-3)


def test_shipped_maps_and_bad_measured_data(tmp_path: Path) -> None:
    path = write_fastmri(tmp_path / "v.h5", size=32, oversample=1, coils=4, slices=2)
    protocol = parse_protocol(MEASURED_PROTOCOL)
    np.save(tmp_path / "maps.npy", birdcage_sensitivities(4, (32, 32)))
    m = _measured_manifest(tmp_path, 32, sensitivities="maps.npy")
    control = BaselineSubject(m, build_operator(m, tmp_path), None, protocol.baseline)
    result = run_suite(control, read_images(path), protocol)
    record = result.to_json()["sensitivities"]
    assert record["source"] == "shipped"
    assert record["file"] == "maps.npy"
    assert result.to_json()["images"][0]["grid"] == "measured"
    # image-only data: simulated measurements, birdcage maps
    birdcage = _measured_manifest(tmp_path, 32)
    control = BaselineSubject(birdcage, build_operator(birdcage, tmp_path), None, protocol.baseline)
    doc = run_suite(control, [LoadedImage(shepp_logan(32), "sl", {})], protocol).to_json()
    assert doc["measurements"] == "simulated"
    assert doc["sensitivities"]["source"] == "birdcage"
    espirit = _measured_manifest(tmp_path, 32, sensitivities="espirit")
    estimated = BaselineSubject(espirit, build_operator(espirit, tmp_path), None, protocol.baseline)
    with pytest.raises(ValueError, match="'espirit' estimates the maps from measured"):
        run_suite(estimated, [LoadedImage(shepp_logan(32), "sl", {})], protocol)
    other = write_fastmri(tmp_path / "three.h5", size=32, oversample=1, coils=3, slices=1)
    with pytest.raises(ValueError, match=r"field 'sampling\.coils': .* has 3 coils"):
        run_suite(control, read_images(other), protocol)
    single = write_fastmri(tmp_path / "sc.h5", size=32, oversample=1, coils=None, slices=1)
    with pytest.raises(ValueError, match="needs multi-coil"):
        run_suite(control, read_images(single), protocol)
    wrong = write_fastmri(tmp_path / "big.h5", size=48, oversample=1, coils=4, slices=1)
    with pytest.raises(ValueError, match=r"does not match the network's image_size \[32, 32\]"):
        run_suite(control, read_images(wrong), protocol)


def _in_units(document: dict[str, Any]) -> Protocol:
    """A short protocol decomposed image by image (``images.per_unit: 1``)."""
    document = copy.deepcopy(document)
    document["images"] = {"max_images": 2, "per_unit": 1}
    document["baseline"]["attack_iterations"] = 10
    document["perturbation"]["budget"].update(
        iterations=8, restarts=2, min_iterations=3, plateau_window=2
    )
    document["perturbation"]["pnas"].update(iterations=3, attack_baseline=False)
    document["perturbation"]["controls"]["noise_draws"] = 1
    return Protocol.model_validate(document)


def _arrays_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_arrays_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_arrays_equal, a, b))
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


@pytest.mark.parametrize("gain", [40.0])
def test_an_audit_in_units_has_the_same_numbers_sharded_or_in_one_process(
    mask_dir: Path, images: list[LoadedImage], gain: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # test 1 split by threat model too (its searches here are shorter than a split needs)
    monkeypatch.setattr(registry, "SPLIT_STEPS", 1)
    protocol = _in_units(yaml.safe_load(SMALL_PROTOCOL))
    model = subject(Leaky(gain), mask_dir)
    whole = run_suite(model, images, protocol)
    names = shard_names(protocol, len(images))
    threats = [f"perturbation/{k}@{t}" for k in (0, 1) for t in ("image", "measurement")]
    assert names == threats + [f"{t}/{k}" for t in ("structural", "sampling") for k in (0, 1)]
    shards = []
    for name in names:
        test, unit, part = parse_shard(name)
        shards.append(run_suite(model, images, protocol, only=[test], unit=unit, part=part))
    # a unit beyond the images (an image set whose count was not known) runs nothing
    empty = run_suite(model, images, protocol, only=["sampling"], unit=2)
    assert empty.tests["sampling"].reason == EMPTY_UNIT
    # in any order the shards land
    documents = [json.loads(json.dumps(s.to_json())) for s in [*shards, empty]][::-1]
    assert documents[-1]["unit"] == {"index": 0, "of": 2, "start": 0, "stop": 1, "part": "image"}
    assert list(documents[-1]["tests"]["perturbation"]["threat_models"]) == ["image"]
    merged = merge_results(documents)
    expected = json.loads(json.dumps(whole.to_json()))
    assert merged["tests"] == expected["tests"]
    assert merged["verdicts"] == expected["verdicts"]
    assert [(s.get("unit"), s.get("part")) for s in merged["shards"]][::-1] == [
        *[(k, t) for k in (0, 1) for t in ("image", "measurement")],
        *[(k, None) for _ in range(2) for k in (0, 1)],
        (2, None),
    ]
    # every image's numbers, named by its index in the audit
    block = merged["tests"]["perturbation"]["threat_models"]["image"]["results"][0]
    assert len(block["network"]["output_change"]) == 2
    structural = merged["tests"]["structural"]
    placed = {row["image"] for row in structural["details"]}
    unplaced = {int(key.split()[1].rstrip(":")) for key in structural["skipped"]}
    assert placed | unplaced == {0, 1}
    if gain:
        assert merged["verdicts"]["perturbation"] == "unstable", merged["tests"]["perturbation"][
            "reason"
        ]
    # the figures' arrays merge as the numbers do
    arrays = [{n: t.figures for n, t in s.tests.items()} for s in [*shards, empty]][::-1]
    tests = merge_figures(documents, arrays)
    for name, merged_test in tests.items():
        assert merged_test.as_dict() == expected["tests"][name]
        assert _arrays_equal(merged_test.figures, whole.tests[name].figures), name
    at = {name: len(documents) - 1 - k for k, name in enumerate(names)}  # in ``documents``
    with pytest.raises(ValueError, match="not each run once"):
        merge_results([d for k, d in enumerate(documents) if k != at["structural/1"]])
    with pytest.raises(ValueError, match="unit 0 of perturbation is not run once in its parts"):
        merge_results([d for k, d in enumerate(documents) if k != at["perturbation/0@measurement"]])
    with pytest.raises(ValueError, match="a unit of the images is run for one test"):
        run_suite(model, images, protocol, unit=0)
    with pytest.raises(ValueError, match="no part 'k-space' of perturbation"):
        run_suite(model, images, protocol, only=["perturbation"], unit=0, part="k-space")


def test_a_protocol_of_one_test_in_units_merges_that_test_only(
    mask_dir: Path, images: list[LoadedImage]
) -> None:
    protocol = parse_protocol(
        MEASURED_PROTOCOL.replace("metrics: {convention: fastmri}", "")
        .replace("max_images: 2}", "max_images: 2, per_unit: 1}")
        .replace("factors: [1.0, 2.0]", "factors: [0.5, 1.0, 2.0]")
    )
    model = subject(Leaky(0.0), mask_dir)
    whole = json.loads(json.dumps(run_suite(model, images, protocol).to_json()))
    names = shard_names(protocol, len(images))
    assert names == ["sampling/0", "sampling/1"]
    shards = [
        run_suite(model, images, protocol, only=["sampling"], unit=parse_shard(n).unit).to_json()
        for n in names
    ]
    merged = merge_results(shards)
    assert merged["tests"] == whole["tests"]
    assert merged["tests"]["perturbation"]["reason"] == NOT_IN_PROTOCOL
    assert merged["tests"]["sampling"]["n_images"] == 2
    assert [s["tests"] for s in merged["shards"]] == [["sampling"], ["sampling"]]


def test_units_are_fixed_by_the_protocol() -> None:
    protocol = _in_units(yaml.safe_load(SMALL_PROTOCOL))
    parts = units(protocol, 3)
    assert [(u.start, u.stop) for u in parts] == [(0, 1), (1, 2), (2, 3)]
    assert len({u.seed for u in parts}) == 3
    assert units(protocol, 3) == parts  # seeded by the protocol and the index only
    undivided = parse_protocol(SMALL_PROTOCOL)
    assert units(undivided, 3) == [Unit(0, 0, 3, undivided.seed)]
    assert shard_names(undivided, 3) == ["perturbation", "structural", "sampling"]
    # test 1 in parts where its searches are long (standard: 4,000 iterations per threat model)
    standard = shard_names(load_protocol("standard"), 5)
    assert standard[:3] == [
        "perturbation/0@image",
        "perturbation/0@measurement",
        "perturbation/1@image",
    ]
    assert len(standard) == 5 * 2 + 5 + 5
    assert shard_names(load_protocol("quick"), 2) == ["perturbation", "structural", "sampling"]
    assert parse_shard("structural") == ("structural", None, None)
    assert parse_shard("perturbation/3@image") == ("perturbation", 3, "image")
    assert parse_shard("perturbation/3@image").args() == [
        "--only", "perturbation", "--unit", "3", "--part", "image"
    ]  # fmt: skip
    for bad in ("speed", "perturbation/x", "perturbation/-1", "perturbation@image", "sampling/0@"):
        with pytest.raises(ValueError, match="not a shard"):
            parse_shard(bad)
