"""Shared fixtures: seeded generators and the devices to test on (CPU, and CUDA when present)."""

from __future__ import annotations

import os

# The wavelet kernels compile (torch.compile) once per shape; the suite uses many shapes, so it
# runs them eagerly. tests/reconstruction/test_wavelets.py checks the compiled path itself.
os.environ["RECON_AUDIT_COMPILE"] = "0"

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# as run_suite does: subnormal floats flushed to zero (the unrolled baselines' backward passes
# run about ten times slower on them)
torch.set_flush_denormal(True)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
