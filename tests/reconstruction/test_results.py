"""results.json, typed: the published schema is current and accepts what a run writes; a
writer's undeclared field is refused; the report's readers get each test's model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from reconstruction.instability.numbers import Perturbation, Sampling, Skipped, Structural
from reconstruction.results import ResultsError, checked, json_schema, read_results
from reconstruction.suite import SHARD_SKIP, merge_results
from tests.app.report.runs import PROTOCOL, suite

DOCS_SCHEMA = Path(__file__).parents[2] / "docs" / "results.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    written: dict[str, Any] = json.loads(json.dumps(suite(PROTOCOL).to_json()))
    return written


def test_the_published_schema_is_current() -> None:
    assert json.loads(DOCS_SCHEMA.read_text()) == json_schema()


def test_the_published_schema_accepts_a_run_and_refuses_what_breaks_it(
    document: dict[str, Any],
) -> None:
    validator = jsonschema_rs.validator_for(json.loads(DOCS_SCHEMA.read_text()))
    validator.validate(document)
    broken = copy.deepcopy(document)
    broken["tests"]["perturbation"]["threat_models"]["image"]["results"][0]["network"][
        "output_change"
    ] = "large"
    assert not validator.is_valid(broken)
    wrong = copy.deepcopy(document)
    wrong["tests"]["sampling"]["verdict"] = "fine"
    assert not validator.is_valid(wrong)


def test_each_test_reads_as_its_model(document: dict[str, Any]) -> None:
    results = read_results(document)
    assert isinstance(results.tests["perturbation"], Perturbation)
    assert isinstance(results.tests["structural"], Structural)
    assert isinstance(results.tests["sampling"], Sampling)
    block = results.tests["perturbation"]
    assert isinstance(block, Perturbation)
    row = block.threat_models["image"].results[0]
    raw = document["tests"]["perturbation"]["threat_models"]["image"]["results"][0]
    assert row.network.output_change == raw["network"]["output_change"]
    assert results.verdicts == {name: t["verdict"] for name, t in document["tests"].items()}


def test_a_writer_cannot_add_an_undeclared_field(document: dict[str, Any]) -> None:
    assert checked(document) is document
    extended = copy.deepcopy(document)
    extended["tests"]["sampling"]["ladder"][0]["network"]["sharpness"] = [1.0]
    with pytest.raises(ResultsError, match=r"tests\.sampling\.ladder\[0\]\.network\.sharpness"):
        checked(extended)
    # a reader keeps what it does not know: documents of a later v1 stay readable
    kept = read_results(extended).tests["sampling"]
    assert isinstance(kept, Sampling)
    assert kept.ladder[0].network.model_extra == {"sharpness": [1.0]}
    # the model's summary is inspect's, described there: open
    open_ended = copy.deepcopy(document)
    open_ended["model"]["calibration"] = "vendor"
    checked(open_ended)


def test_bad_documents_are_refused_with_where(document: dict[str, Any]) -> None:
    unknown = copy.deepcopy(document)
    unknown["tests"]["hallucination"] = {"verdict": "stable", "reason": "-"}
    with pytest.raises(ResultsError, match="unknown test"):
        read_results(unknown)
    missing = copy.deepcopy(document)
    del missing["tests"]["structural"]["counts"]
    with pytest.raises(ResultsError, match="counts"):
        read_results(missing)
    with pytest.raises(ResultsError):
        read_results([])


def test_a_skipped_test_is_its_reason_only(document: dict[str, Any]) -> None:
    shard = copy.deepcopy(document)
    shard["tests"]["sampling"] = {"verdict": "skipped", "reason": SHARD_SKIP}
    shard["verdicts"]["sampling"] = "skipped"
    skipped = read_results(shard).tests["sampling"]
    assert isinstance(skipped, Skipped)
    assert skipped.reason == SHARD_SKIP
    other = copy.deepcopy(document)
    for name in ("perturbation", "structural"):
        other["tests"][name] = {"verdict": "skipped", "reason": SHARD_SKIP}
        other["verdicts"][name] = "skipped"
    merged = merge_results([shard, other])
    assert read_results(merged).shards is not None
    assert merged["tests"] == document["tests"]
    with pytest.raises(ValueError, match="perturbation was run by 2 shards, not once"):
        merge_results([shard, document])
