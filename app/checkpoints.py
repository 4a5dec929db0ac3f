"""Signed checkpoints of the audit log, kept outside the database.

The event chain (:mod:`app.events`) proves that no event was changed *in place*; whoever can
write the database could still rewrite the chain from an edited event on, or delete its last
events. Its head is therefore anchored outside the database twice:

* each certificate carries the chain's length and head hash at issue (``event_chain`` in its
  signed ``certificate.json`` and on its reproducibility page), and
* a checkpoint file (chain length + head hash, signed with the service's signing key by the
  signer process, :mod:`app.certificates.signer`) is written under
  :attr:`~app.settings.Settings.checkpoint_folder` at every certificate issue and by
  ``recon-audit admin checkpoint`` (for an operator's cron). A checkpoint's certificate is
  trusted as a certificate's signer is: issued by a trusted CA, and on that CA's signed list of
  signers and not revoked (:class:`app.certificates.pki.Trust`).

:func:`verify` checks the chain against every checkpoint and every stored certificate: an edit
breaks the chain, a recomputed chain no longer holds an anchored head at its position, and a
truncated one is shorter than an anchor.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.certificates import CHECKPOINT_SCHEMA
from app.certificates.pki import Trust, trust
from app.certificates.signer import sign_checkpoint
from app.errors import AppError
from app.events import Anchor, Head
from app.orm import AuditResult
from app.settings import Settings
from app.storage import Store

__all__ = ["SCHEMA", "certificate_anchors", "read_all", "signed_body", "write"]

SCHEMA = CHECKPOINT_SCHEMA


def signed_body(document: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: its fields but the signature and the
    certificate, canonical JSON."""
    body = {k: v for k, v in document.items() if k not in ("signature", "certificate")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _verify_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature(f"unsupported key {type(public).__name__}")


def write(settings: Settings, head: Head, reason: str) -> Path:
    """Have ``head`` signed with the service's key (by the signer process) and write it as a
    new checkpoint file (atomically; files are never rewritten). Returns its path."""
    document: dict[str, Any] = {
        "schema": SCHEMA,
        **head.as_dict(),
        "written": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "reason": reason,
    }
    signature, certificate = sign_checkpoint(settings, signed_body(document))
    document["signature"] = base64.b64encode(signature).decode()
    document["certificate"] = certificate
    folder = settings.checkpoint_folder
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{head.events:012d}-{stamp}-{head.hash[:12]}.json"
    handle, scratch = tempfile.mkstemp(dir=folder, prefix=".checkpoint-")
    with os.fdopen(handle, "w") as out:
        json.dump(document, out, indent=2, sort_keys=True)
    os.chmod(scratch, 0o644)
    os.replace(scratch, path)
    return path


def _read(trusted: Trust, path: Path) -> Anchor:
    source = f"checkpoint {path.name}"
    try:
        document = json.loads(path.read_text())
        head = Head(int(document["events"]), str(document["head"]))
        signature = base64.b64decode(document["signature"], validate=True)
        cert = x509.load_pem_x509_certificate(str(document["certificate"]).encode())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Anchor(Head(0, ""), source, f"{source} cannot be read: {type(exc).__name__}")
    if document.get("schema") != SCHEMA:
        return Anchor(head, source, f"{source} is not a {SCHEMA} document")
    try:
        _verify_signature(cert, signature, signed_body(document))
    except InvalidSignature:
        return Anchor(head, source, f"{source}: its signature does not verify")
    if not trusted.trusts(cert):
        refusal = trusted.refusal(cert)
        why = f": {refusal[1]}" if refusal is not None else ""
        problem = f"{source} is signed by a certificate the service does not trust{why}"
        return Anchor(head, source, problem)
    return Anchor(head, source)


def read_all(settings: Settings) -> list[Anchor]:
    """Every checkpoint file, oldest chain position first."""
    folder = settings.checkpoint_folder
    if not folder.is_dir():
        return []
    trusted = trust(settings)
    return [_read(trusted, path) for path in sorted(folder.glob("[0-9]*.json"))]


def certificate_anchors(session: Session, store: Store) -> list[Anchor]:
    """The head each stored certificate carried at issue (``event_chain`` in its
    ``certificate.json``; certificates issued before it was recorded carry none)."""
    anchors = []
    for result in session.scalars(select(AuditResult).order_by(AuditResult.created_at)):
        sha = result.files.get("certificate.json")
        if sha is None:
            continue
        source = f"the certificate of audit {result.audit_id}"
        try:
            chain = json.loads(store.verified(str(sha)).read_text()).get("event_chain")
        except (AppError, OSError, ValueError) as exc:
            anchors.append(Anchor(Head(0, ""), source, f"{source} cannot be read: {exc}"))
            continue
        if chain is not None:
            anchors.append(Anchor(Head(int(chain["events"]), str(chain["head"])), source))
    return anchors
