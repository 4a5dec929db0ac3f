"""``results.json``, typed: :class:`Results` is the document a run writes (schema
``recon-audit/results/v1``) and what the report reads; each test's block is the model its
registry entry declares (:mod:`reconstruction.instability.numbers`). The published JSON Schema
is ``docs/results.schema.json`` (:func:`json_schema`; ``python -m reconstruction.results``
prints it, and a test checks that the file is current).

v1 grows by addition only: fields added after the first v1 documents are optional, and a reader
keeps fields it does not know. A writer adds nothing undeclared: :func:`checked` refuses it.
"""

from __future__ import annotations

import json
import sys
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator

from reconstruction.instability.numbers import Outcome, Record, Skipped, undeclared
from reconstruction.instability.registry import BY_NAME, REGISTRY
from reconstruction.protocols import Protocol

__all__ = [
    "RESULTS_SCHEMA",
    "ImageRecord",
    "Results",
    "ResultsError",
    "checked",
    "json_schema",
    "read_results",
]

RESULTS_SCHEMA = "recon-audit/results/v1"
#: the validation context's key asking the tests' blocks for strict validation
_STRICT = "strict"
Verdict = Literal["stable", "unstable", "inconclusive", "skipped"]


class ResultsError(ValueError):
    """A results document that does not follow the schema."""


class Open(Record):
    """A record whose further fields are described elsewhere (the model's summary by
    ``inspect``, the maps' estimation by :mod:`reconstruction.coils`)."""

    open_ended: ClassVar[bool] = True


class ProtocolIdentity(Record):
    name: str
    version: str
    sha256: str
    builtin: bool


class ModelRecord(Open):
    """The network audited (``recon-audit inspect``'s summary; for the calibration control,
    the baseline's)."""

    name: str
    format: str
    sha256: str | None
    gradient_access: Literal["white-box", "black-box"]
    #: where the search's gradient came from (older results: absent)
    gradient_route: Literal["exact", "straight-through surrogate", "gradient-free"] | None = None
    modality: str
    operator: str


class ImageRecord(Record):
    """One test image as the tests received it: its source and the SHA-256 of the prepared
    array; measured k-space adds its grid, scale and hashes."""

    source: str
    sha256: str
    original_shape: list[int]
    metadata: dict[str, str | int | float]
    measured: bool | None = None
    grid: Literal["measured", "reconstruction"] | None = None
    scale: float | None = None
    kspace_sha256: str | None = None
    kspace_shape: list[int] | None = None


class CustomDetail(Record):
    name: str
    sha256: str


class Sensitivities(Open):
    source: Literal["shipped", "espirit", "birdcage"]
    coils: int
    sha256: str


class MetricConvention(Record):
    name: str
    description: str


class Shard(Record):
    """One shard of a fanned-out audit: the tests it ran (``unit``: on that unit of the
    images; ``part``: that part of its test there), when, and where."""

    tests: list[str]
    unit: int | None = None
    part: str | None = None
    created: str
    environment: dict[str, Any]


class UnitRecord(Record):
    """The part of the audit's images a shard ran its test on: unit ``index`` of ``of``
    (:attr:`reconstruction.protocols.Images.per_unit`), the images ``start:stop`` (empty: a
    unit beyond the audit's images); ``part``: the one part of the test run there (test 1: a
    threat model), where the test splits."""

    index: int
    of: int
    start: int
    stop: int
    part: str | None = None


class Results(Record):
    """A results document. ``tests``: each test's block, the model of its registry entry
    (:class:`reconstruction.instability.numbers.Skipped` when it did not run)."""

    schema_: Literal["recon-audit/results/v1"] = Field(alias="schema")
    created: str
    protocol: ProtocolIdentity
    protocol_document: Protocol
    model: ModelRecord
    images: list[ImageRecord]
    custom_details: list[CustomDetail] = Field(default_factory=list)
    measurements: Literal["measured", "simulated"] | None = None
    sensitivities: Sensitivities | None = None
    metric_convention: MetricConvention | None = None
    tests: dict[str, Outcome]
    verdicts: dict[str, Verdict]
    environment: dict[str, Any]
    timings_seconds: dict[str, float]
    shards: list[Shard] | None = None
    #: a shard's document only: the unit of the images it ran its test on
    unit: UnitRecord | None = None

    @field_validator("tests", mode="before")
    @classmethod
    def _typed(cls, tests: Any, info: ValidationInfo) -> Any:
        if not isinstance(tests, dict):
            return tests
        unknown = sorted(set(tests) - set(BY_NAME))
        if unknown:
            raise ValueError(f"unknown test(s) {unknown}")
        strict = bool(info.context and info.context.get(_STRICT))
        return {
            name: BY_NAME[name].block.validate_python(block, strict=strict)
            for name, block in tests.items()
        }

    def test(self, name: str) -> Outcome | None:
        """The block of test ``name``, or None when the document has none."""
        return self.tests.get(name)


def read_results(document: object) -> Results:
    """A results document (parsed JSON) as :class:`Results`; :class:`ResultsError` with where
    it departs from the schema."""
    try:
        return Results.model_validate(document)
    except ValidationError as exc:
        raise ResultsError(f"not a {RESULTS_SCHEMA} document: {exc}") from exc


def _written(document: dict[str, Any]) -> Results:
    """``document`` as results.json will hold it, validated strictly (a JSON ``1.0`` is no
    ``true``, a string no number): what the published schema accepts."""
    try:
        return Results.model_validate_json(
            json.dumps(document), strict=True, context={_STRICT: True}
        )
    except ValidationError as exc:
        raise ResultsError(f"not a {RESULTS_SCHEMA} document: {exc}") from exc


def checked(document: dict[str, Any]) -> dict[str, Any]:
    """``document``, once it is shown to follow the schema with nothing undeclared (what a
    writer checks before results.json is written); :class:`ResultsError` otherwise."""
    extra = undeclared(_written(document))
    if extra:
        raise ResultsError(
            f"the results hold fields the schema does not declare: {', '.join(extra[:10])}"
        )
    return document


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Results`, with each test's block spelled out (its numbers
    model, or skipped)."""
    tests: Any = create_model(  # type: ignore[call-overload]
        "Tests",
        __base__=Record,
        **{test.name: (test.numbers | Skipped, None) for test in REGISTRY},
    )
    document: Any = create_model("Results", __base__=Results, tests=(tests, ...))
    schema: dict[str, Any] = document.model_json_schema(by_alias=True, mode="validation")
    schema["title"] = f"recon-audit results.json ({RESULTS_SCHEMA})"
    return schema


if __name__ == "__main__":
    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
