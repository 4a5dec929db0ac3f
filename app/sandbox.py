"""Run untrusted models only in a child process: the ``recon-audit`` CLI in a fresh Python,
with resource limits, its own session, a private working folder, and an environment that holds
no secrets (no database or broker URLs, no tokens: only what Python and torch need).

Upload validation runs ``recon-audit inspect`` this way, and every audit runs
``recon-audit audit`` this way; the parent reads the child's JSON output and progress lines.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROGRESS_PREFIX", "SandboxResult", "run_cli", "safe_env"]

#: lines the child writes on stderr to report progress: ``{"progress": {...}}``
PROGRESS_PREFIX = '{"progress":'
PR_SET_PDEATHSIG = 1
#: environment variables passed through to the child (everything else is dropped)
PASSED = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "RECON_AUDIT_COMPILE",
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "VIRTUAL_ENV",
)


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    def error_message(self) -> str:
        """The CLI's ``Error: ...`` line (exit 2), else the tail of stderr."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        for line in reversed(lines):
            if line.startswith("Error: "):
                return line.removeprefix("Error: ")
        if self.timed_out:
            return "the model's sandboxed run exceeded its time limit"
        return (lines[-1] if lines else f"the sandboxed run exited with {self.returncode}")[:2000]


def safe_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(home / "mpl"))
    return env


def _limits(cpu_seconds: int, memory_bytes: int | None) -> Callable[[], None]:
    def apply() -> None:
        # die with the worker: a killed worker must not leave an orphaned audit running
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply


def run_cli(
    args: Sequence[str],
    *,
    workdir: Path,
    timeout: float,
    cpu_seconds: int,
    memory_bytes: int | None = None,
    on_progress: Callable[[dict[str, object]], None] | None = None,
) -> SandboxResult:
    """``python -m app.cli ARGS`` in ``workdir`` under the limits; progress lines on stderr are
    passed to ``on_progress`` as they arrive."""
    home = workdir / ".home"
    home.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=workdir,
        env=safe_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_limits(cpu_seconds, memory_bytes),
    )
    out_chunks: list[str] = []
    err_lines: list[str] = []
    killed: list[bool] = []

    def pump_stdout() -> None:
        assert process.stdout is not None
        out_chunks.append(process.stdout.read())

    def kill() -> None:
        killed.append(True)
        os.killpg(process.pid, signal.SIGKILL)

    reader = threading.Thread(target=pump_stdout, daemon=True)
    reader.start()
    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    on_progress(json.loads(line)["progress"])
                continue
            err_lines.append(line)
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=10)
    return SandboxResult(process.returncode, "".join(out_chunks), "".join(err_lines), bool(killed))
