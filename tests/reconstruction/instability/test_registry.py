"""The tests, declared once: the registry's names are the suite's, results.json's and the
protocol's, and what a protocol enables is what the suite runs."""

from __future__ import annotations

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
            assert test.steps(protocol) > 0
    quick = load_protocol("quick")
    only_sampling = quick.model_copy(update={"perturbation": None, "structural": None})
    assert [test.name for test in enabled(only_sampling)] == ["sampling"]
