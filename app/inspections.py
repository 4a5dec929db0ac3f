"""Slots for the jailed checks of uploads: each user's uploads are checked one at a time, and at
most ``settings.max_inspections`` checks run on this host at once, all users together.

The slots are ``flock`` locks on files under ``settings.locks_dir``, so they hold across every
process of the host (several API processes, ``serve``'s threads) and are released by the kernel
when their holder dies. A request that finds its user's slot taken gets 429, one that finds
every host slot taken gets 503, both with ``Retry-After``: an upload is never queued behind
another (a submitter cannot tie up the API's threads by sending many at once)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from app.errors import TooManyRequests, Unavailable
from app.settings import Settings

__all__ = ["Busy", "inspection_slot", "lock_files"]


class Busy(Unavailable):
    """Every host slot for checking uploads is taken."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(retry_after)


def _try_lock(path: Path, stack: ExitStack) -> bool:
    """Hold an exclusive lock on ``path`` until ``stack`` closes; False when another holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    stack.callback(os.close, descriptor)  # closing the descriptor releases the lock
    return True


def lock_files(settings: Settings, user_id: str) -> tuple[Path, list[Path]]:
    """The lock file of the user's slot and those of the host's slots."""
    folder = settings.locks_dir
    mine = folder / f"inspect-user-{hashlib.sha256(user_id.encode()).hexdigest()[:32]}.lock"
    return mine, [folder / f"inspect-slot-{i}.lock" for i in range(settings.max_inspections)]


@contextmanager
def inspection_slot(settings: Settings, user_id: str) -> Iterator[None]:
    """Hold the user's slot and one of the host's while the block runs (see the module)."""
    settings.locks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    wait = settings.inspection_retry_after
    mine, slots = lock_files(settings, user_id)
    with ExitStack() as stack:
        if not _try_lock(mine, stack):
            raise TooManyRequests(
                "another upload of yours is being checked; send the next one when it is done",
                retry_after=wait,
            )
        if not any(_try_lock(slot, stack) for slot in slots):
            raise Busy(
                f"the service is checking {settings.max_inspections} uploads already; "
                "retry shortly",
                retry_after=wait,
            )
        yield
