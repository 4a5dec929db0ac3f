"""What an audit's stored ``error`` says: the jail's reduced message as it is, anything else as
its type and a sanitised excerpt (no internal paths, no long tokens)."""

from __future__ import annotations

from app.sandbox import SandboxUnavailable
from worker.tasks import _message


def test_failure_messages_carry_no_paths_or_secrets() -> None:
    reduced = "the audit run failed: the memory limit was exceeded (MemoryError)"
    assert _message(RuntimeError(reduced)) == reduced
    unavailable = SandboxUnavailable("untrusted models run only in a jail, and it is unavailable")
    assert _message(unavailable) == str(unavailable)
    leaked = _message(
        FileNotFoundError(2, "No such file", "/data/store/tmp/audit-1/-----BEGIN PRIVATE KEY")
    )
    assert leaked.startswith("FileNotFoundError: [Errno 2] No such file")
    assert "/data" not in leaked
    assert "BEGIN" not in leaked
