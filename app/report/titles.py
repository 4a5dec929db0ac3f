"""What the report calls things: the two reconstructions compared, the tests' titles and the
questions they answer, and how a perturbation's budget is normalised. Shared by the figures and
the view models."""

from __future__ import annotations

from reconstruction.instability.registry import REGISTRY

__all__ = ["ROLES", "TEST_QUESTIONS", "TEST_TITLES", "eps_label"]

#: the reconstructions every test compares, in report order: the audited network and the
#: compressed-sensing baseline run beside it
ROLES = ("network", "baseline")
#: each test's title and question (:data:`reconstruction.instability.registry.REGISTRY`)
TEST_TITLES = {test.name: test.title for test in REGISTRY}
TEST_QUESTIONS = {test.name: test.question for test in REGISTRY}


def eps_label(threat: str) -> str:
    """The budget's normalisation for a threat model (``image`` or ``measurement``)."""
    return "eps = ||r|| / ||x||" if threat == "image" else "eps = ||e|| / ||y||"
