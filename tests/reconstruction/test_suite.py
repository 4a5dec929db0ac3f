from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconstruction.data import LoadedImage
from reconstruction.instability.common import BaselineSubject
from reconstruction.models import build_operator
from reconstruction.protocols import Protocol
from reconstruction.suite import RESULTS_SCHEMA, SHARD_SKIP, merge_results, run_suite
from tests.reconstruction.conftest import SMALL_PROTOCOL, Leaky, manifest, subject


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
        "name": "small",
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
