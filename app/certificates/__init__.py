"""Audit certificates: the report rendered as a PDF/A-3b certificate (``app.report``) with its
identity (:class:`app.certificates.identity.Certificate`), signed by the service (PAdES,
:mod:`app.certificates.signing`) with its own CA or a configured key
(:mod:`app.certificates.pki`) in the signer process, the only one that reads the key
(:mod:`app.certificates.signer`), approved by an auditor with a second signature, and verified
(:mod:`app.certificates.verify`; API in :mod:`app.certificates.router`, CLI ``recon-audit
verify``).

This module holds only the names every part shares (no pyHanko import), so the report renderer
can use them cheaply; it imports none of its submodules.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "APPROVAL_FIELD",
    "CERTIFICATE_SCHEMA",
    "CHECKPOINT_SCHEMA",
    "ISSUANCE_FIELD",
    "ISSUER",
    "MEANING_APPROVED",
    "MEANING_ISSUED",
    "SignatureBox",
    "git_revision",
]

#: the service's printed name: in its signature (``/Name``) and the printed signature block
ISSUER = "recon-audit service"
#: the signatures' meanings (21 CFR 11.50), stored as each signature's ``/Reason``
MEANING_ISSUED = "issued"
MEANING_APPROVED = "approved"
#: the signature fields: the service's certification signature, the auditor's approval
ISSUANCE_FIELD = "Issuance"
APPROVAL_FIELD = "Approval"
CERTIFICATE_SCHEMA = "recon-audit/certificate/v1"
#: a signed checkpoint of the audit log's head (:mod:`app.checkpoints`)
CHECKPOINT_SCHEMA = "recon-audit/checkpoint/v1"
GIT_REVISION_ENV = "RECON_AUDIT_GIT_REVISION"
_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SignatureBox:
    """A signature field's place: page index and rectangle ``(x1, y1, x2, y2)`` in PDF points
    (origin at the bottom left)."""

    page: int
    rect: tuple[int, int, int, int]


@lru_cache(maxsize=1)
def git_revision() -> str:
    """The service's git revision: ``git rev-parse HEAD`` in its source tree when that works,
    else ``$RECON_AUDIT_GIT_REVISION`` (set when building an image without ``.git``), else
    ``"unknown"``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        revision = done.stdout.strip()
        if done.returncode == 0 and len(revision) in (40, 64):
            return revision
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(GIT_REVISION_ENV, "").strip() or "unknown"
