"""The tests, declared once: the registry's names are the suite's, results.json's and the
protocol's, and what a protocol enables is what the suite runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reconstruction.instability.numbers import Outcome, Skipped
from reconstruction.instability.registry import REGISTRY, TESTS, enabled
from reconstruction.protocols import BUILTIN, Protocol, load_protocol


def test_every_test_is_declared_once_with_its_protocol_section() -> None:
    assert TESTS == ("perturbation", "structural", "sampling")
    assert len({test.name for test in REGISTRY}) == len(REGISTRY)
    for test in REGISTRY:
        assert test.section in Protocol.model_fields
        assert test.title
        assert test.question.endswith("?")


def test_a_protocol_enables_the_tests_it_configures() -> None:
    for name in BUILTIN:
        protocol = load_protocol(name)
        on = [test.name for test in enabled(protocol)]
        assert on == [t.name for t in REGISTRY if getattr(protocol, t.section) is not None]
        for test in enabled(protocol):
            assert test.steps(protocol, None) > 0
    quick = load_protocol("quick")
    only_sampling = quick.model_copy(update={"perturbation": None, "structural": None})
    assert [test.name for test in enabled(only_sampling)] == ["sampling"]


def test_each_test_reads_its_block_as_its_model_or_skipped() -> None:
    for test in REGISTRY:
        assert issubclass(test.numbers, Outcome)
        assert test.numbers is not Outcome
        skipped = test.block.validate_python({"verdict": "skipped", "reason": "not run"})
        assert isinstance(skipped, Skipped)
        with pytest.raises(ValidationError):  # a verdict needs the numbers behind it
            test.block.validate_python({"verdict": "stable", "reason": "trust me"})
        with pytest.raises(ValidationError):
            test.block.validate_python({"verdict": "fine", "reason": "-"})
