"""The three instability tests of Antun et al. (PNAS 2020), each beside a CS baseline:
worst-case perturbations, small structural changes, more samples."""

from reconstruction.instability.common import STABLE_WORDING, Subject, TestResult, Verdict
from reconstruction.instability.more_samples import run_more_samples
from reconstruction.instability.perturbation import run_perturbation
from reconstruction.instability.structural import run_structural

__all__ = [
    "STABLE_WORDING",
    "Subject",
    "TestResult",
    "Verdict",
    "run_more_samples",
    "run_perturbation",
    "run_structural",
]
