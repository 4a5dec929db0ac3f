"""The three tests, each declared once: its name (the key in results.json, the protocol and
``--only``), the title and question the certificate prints, the protocol section that
configures it, its runner, how many progress steps it takes, the model of its numbers (its
block of results.json, :mod:`reconstruction.instability.numbers`), how its units (parts of
an audit's images) are merged, and the parts it splits into on each unit (test 1: its threat
models, where its searches are long enough for a shard of their own to pay). The suite, the
command lines, the worker's fan-out and the report iterate :data:`REGISTRY`; the report's
figures and views are keyed by :data:`TESTS` (a test checks that every test has both)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter

from reconstruction.instability.numbers import Outcome, Perturbation, Sampling, Skipped, Structural
from reconstruction.protocols import Protocol

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from reconstruction.instability.common import AuditData, Subject, TestResult, Unit

__all__ = [
    "BY_NAME",
    "REGISTRY",
    "SPLIT_STEPS",
    "TESTS",
    "InstabilityTest",
    "Merger",
    "Runner",
    "enabled",
]

#: the fewest search iterations (per image) a part of a test must hold to be run as a shard of
#: its own: at that size a shard's start-up (Python, torch, the network, about 10 s on a CPU)
#: is a few per cent of its run, and the parts balance a fan-out over workers (five images of
#: two threat models are ten equal shards, not five)
SPLIT_STEPS = 1000


def _imported(target: str) -> Callable[..., Any]:
    """The function ``module:function``, imported at the first call, so that what only reads
    the registry's names and titles (the report) loads no test code."""
    module, _, function = target.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


class Runner:
    """How the suite calls a test: ``(subject, truth, protocol, data=..., details=...,
    unit=..., part=..., progress=...)`` (``details``: the user's structural details, for the
    test that uses them; ``unit``: the part of the audit the images are, for the tests whose
    random choices or records depend on it; ``part``: one of the test's parts
    (:attr:`InstabilityTest.parts`, which the suite checks), given only to a test that splits).
    ``target`` names the test's function (``module:function``)."""

    def __init__(
        self, target: str, *, takes_details: bool = False, takes_unit: bool = True
    ) -> None:
        self.target, self.takes_details, self.takes_unit = target, takes_details, takes_unit

    def __call__(
        self,
        subject: Subject,
        truth: Tensor,
        protocol: Protocol,
        *,
        data: AuditData | None,
        details: Sequence[tuple[str, np.ndarray]],
        unit: Unit,
        progress: Callable[[int], None],
        part: str | None = None,
    ) -> TestResult:
        extra: dict[str, Any] = {"custom": details} if self.takes_details else {}
        if self.takes_unit:
            extra["unit"] = unit
        if part is not None:
            extra["part"] = part
        result: TestResult = _imported(self.target)(
            subject, truth, protocol, data=data, progress=progress, **extra
        )
        return result


class Merger:
    """How a test's units (or one unit's parts) are merged: ``(blocks, figures=None) ->
    TestResult``, the blocks of results.json of its units in image order (of its parts in the
    protocol's order), and their figure arrays when at hand, merged into the test's block over
    every image (every part) (``module:function``)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(
        self, blocks: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
    ) -> TestResult:
        result: TestResult = _imported(self.target)(blocks, figures)
        return result


def _search_steps(protocol: Protocol) -> int:
    """Test 1's iterations of batched starts at one threat model: network and baseline, the
    pass down the grid, the pass up, the window's search."""
    p = protocol.perturbation
    assert p is not None
    passes = (2 if p.budget.both_ways else 1) * (2 if p.local.attack else 1)
    return 2 * len(p.budget.eps) * p.budget.iterations * passes


def _perturbation_steps(protocol: Protocol, part: str | None = None) -> int:
    """Iterations of batched starts (:func:`_search_steps`) at each threat model (``part``: at
    that one); the paper's search (network and, where attacked, baseline), with the image
    domain's."""
    p = protocol.perturbation
    assert p is not None
    threats = p.threat_models if part is None else [part]
    steps = len(threats) * _search_steps(protocol)
    if p.pnas is not None and "image" in threats:
        steps += p.pnas.iterations * (2 if p.pnas.attack_baseline else 1)
    return steps


def _threat_parts(protocol: Protocol) -> tuple[str, ...]:
    """Test 1's parts: its threat models, each searched on its own (their seeds are their
    places in the protocol's list, so the numbers are the same however they run), where there
    are several and each holds :data:`SPLIT_STEPS` iterations at least."""
    p = protocol.perturbation
    if p is None or len(p.threat_models) < 2 or _search_steps(protocol) < SPLIT_STEPS:
        return ()
    return tuple(p.threat_models)


def _whole(_protocol: Protocol) -> tuple[str, ...]:
    """A test run whole on each unit."""
    return ()


def _structural_steps(protocol: Protocol, _part: str | None = None) -> int:
    s = protocol.structural
    assert s is not None
    return len(s.heights_px) * len(s.contrasts)


def _sampling_steps(protocol: Protocol, _part: str | None = None) -> int:
    assert protocol.sampling is not None
    return len(protocol.sampling.factors)


@dataclass(frozen=True)
class InstabilityTest:
    name: str
    title: str
    question: str
    #: the protocol's section (an attribute of :class:`Protocol`); None there: not run
    section: str
    run: Runner
    #: the progress steps it reports for a protocol that runs it (on one of its parts)
    steps: Callable[[Protocol, str | None], int]  # (protocol, part)
    #: its block of results.json when it ran (when it did not: :class:`Skipped`)
    numbers: type[Outcome]
    #: merges its units (:attr:`reconstruction.protocols.Images.per_unit`)
    merge: Merger
    #: the parts it splits into on each unit (none: run whole), each a shard of its own
    parts: Callable[[Protocol], tuple[str, ...]] = _whole
    #: merges one unit's parts into the unit's block, as if run whole
    merge_parts: Merger | None = None

    @cached_property
    def block(self) -> TypeAdapter[Outcome]:
        """Reads the test's block of results.json: its numbers model, or
        :class:`Skipped` (by ``verdict``)."""
        union: Any = self.numbers | Skipped
        adapter: TypeAdapter[Outcome] = TypeAdapter(
            Annotated[union, Field(discriminator="verdict")]
        )
        return adapter

    def config(self, protocol: Protocol) -> object | None:
        """The protocol's settings for this test, or None when the protocol does not run it."""
        config: object | None = getattr(protocol, self.section)
        return config


REGISTRY: tuple[InstabilityTest, ...] = (
    InstabilityTest(
        name="perturbation",
        title="Tiny worst-case perturbations",
        question=(
            "Can a perturbation too small to notice, in the image or in the measurements, change "
            "the network's reconstruction much more than it changes the baseline's under the "
            "same attack?"
        ),
        section="perturbation",
        run=Runner("reconstruction.instability.perturbation:run_perturbation"),
        steps=_perturbation_steps,
        numbers=Perturbation,
        merge=Merger("reconstruction.instability.perturbation:merge_perturbation"),
        parts=_threat_parts,
        merge_parts=Merger("reconstruction.instability.perturbation:merge_threats"),
    ),
    InstabilityTest(
        name="structural",
        title="Small structural changes",
        question=(
            "Does the network reconstruct small details (card suits, text) added to the image "
            "that the compressed-sensing baseline shows?"
        ),
        section="structural",
        run=Runner("reconstruction.instability.structural:run_structural", takes_details=True),
        steps=_structural_steps,
        numbers=Structural,
        merge=Merger("reconstruction.instability.structural:merge_structural"),
    ),
    InstabilityTest(
        name="sampling",
        title="More samples",
        question=(
            "Does the network's reconstruction improve when it is given more measurements than "
            "it was trained with, as the baseline's does?"
        ),
        section="sampling",
        run=Runner("reconstruction.instability.more_samples:run_more_samples", takes_unit=False),
        steps=_sampling_steps,
        numbers=Sampling,
        merge=Merger("reconstruction.instability.more_samples:merge_more_samples"),
    ),
)

#: the tests' names, in the report's order
TESTS: tuple[str, ...] = tuple(test.name for test in REGISTRY)
#: the tests by name
BY_NAME: dict[str, InstabilityTest] = {test.name: test for test in REGISTRY}


def enabled(protocol: Protocol) -> list[InstabilityTest]:
    """The tests ``protocol`` runs, in the report's order."""
    return [test for test in REGISTRY if test.config(protocol) is not None]
