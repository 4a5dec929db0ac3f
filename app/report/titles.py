"""What the report calls things: the two reconstructions compared, the tests' titles and the
questions they answer, and how a perturbation's budget is normalised. Shared by the figures and
the view models."""

from __future__ import annotations

__all__ = ["ROLES", "TEST_QUESTIONS", "TEST_TITLES", "eps_label"]

#: the reconstructions every test compares, in report order: the audited network and the
#: compressed-sensing baseline run beside it
ROLES = ("network", "baseline")
TEST_TITLES = {
    "perturbation": "Tiny worst-case perturbations",
    "structural": "Small structural changes",
    "sampling": "More samples",
}
TEST_QUESTIONS = {
    "perturbation": (
        "Can a perturbation too small to notice, in the image or in the measurements, change the "
        "network's reconstruction much more than it changes the baseline's under the same attack?"
    ),
    "structural": (
        "Does the network reconstruct small details (card suits, text) added to the image that "
        "the compressed-sensing baseline shows?"
    ),
    "sampling": (
        "Does the network's reconstruction improve when it is given more measurements than it "
        "was trained with, as the baseline's does?"
    ),
}


def eps_label(threat: str) -> str:
    """The budget's normalisation for a threat model (``image`` or ``measurement``)."""
    return "eps = ||r|| / ||x||" if threat == "image" else "eps = ||e|| / ||y||"
