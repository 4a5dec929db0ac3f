"""Shared fixtures: seeded generators and the devices to test on (CPU, and CUDA when present);
and a check, when the session ends, that no test left a process running."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

# The wavelet kernels compile (torch.compile) once per shape; the suite uses many shapes, so it
# runs them eagerly. tests/reconstruction/test_wavelets.py checks the compiled path itself.
os.environ["RECON_AUDIT_COMPILE"] = "0"

import pytest
import torch

from app.processes import alive

# In parallel (pytest-xdist, as `make test` runs the suite), one thread per process, the
# processes the tests start included (the sandbox passes OMP_NUM_THREADS on): on two cores, two
# workers of two torch threads each ran the suite slower than one process; one thread each
# halved its time. An explicit OMP_NUM_THREADS is kept.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


def _started_by_tests(basetemp: Path) -> list[tuple[int, str]]:
    """Processes other than this one whose environment or command line names the session's
    temporary folder (every service a test starts has its data there): pid, command."""
    mark = f"{basetemp}{os.sep}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (mark in environ or mark in command) and alive(int(entry.name)):
            found.append((int(entry.name), command.replace(b"\0", b" ").decode(errors="replace")))
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test: no process a test started runs on (they are killed, and the session
    fails naming them)."""
    basetemp = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 10
    while (left := _started_by_tests(basetemp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"tests left processes running: {left}"
