"""Child processes that never outlive the service: a parent-death signal for the children it
starts, and the process tree under a pid (to check that a stopped service left nothing)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from pathlib import Path

__all__ = ["alive", "descendants", "die_with_parent"]

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``signum`` when the process that started it dies
    (``PR_SET_PDEATHSIG``, kept across ``exec``), and exits at once where that process died
    before the signal was set."""
    parent = os.getpid()

    def apply() -> None:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum) != 0:
            os._exit(127)
        if os.getppid() != parent:
            os._exit(128 + signum)

    return apply


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid (``None``: it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name, in brackets, may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """The pids of every living process under ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            if stat[0] not in ("Z", "X"):
                children.setdefault(stat[1], []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
