"""A certificate's identity: its id, the audit it certifies, when and by which service (version
and git revision) it was issued, the manifest as submitted and the audit log's head. Printed on
the certificate's cover and written as ``certificate.json`` (:data:`CERTIFICATE_SCHEMA`),
which the PDF carries as an attachment."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import reconstruction
from app.certificates import CERTIFICATE_SCHEMA, ISSUER, git_revision

__all__ = ["Certificate"]


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Certificate:
    """The certificate's identity, printed on the cover and written as ``certificate.json``.

    ``id``: the audit's id when the service issues it, else a random UUID (32 hex digits, as
    the service's ids); ``issued``: UTC; ``manifest``: the manifest as submitted (``None`` when
    unknown); ``signed``: ``False`` for a copy written without a signature (the cover says so).
    """

    id: str = field(default_factory=_new_id)
    issued: datetime = field(default_factory=_utc_now)
    audit_id: str | None = None
    manifest: dict[str, Any] | None = None
    service_version: str = reconstruction.__version__
    git_revision: str = field(default_factory=git_revision)
    issuer: str = ISSUER
    verify_url: str | None = None
    signed: bool = True
    #: the audit log's head when the service issued it, ``{"events": n, "head": sha256}``
    #: (anchors the log outside the database: ``recon-audit admin verify-events``)
    event_chain: dict[str, Any] | None = None

    @property
    def issued_text(self) -> str:
        return self.issued.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def to_json(
        self, document: dict[str, Any], *, results_sha256: str, protocol_yaml_sha256: str
    ) -> dict[str, Any]:
        """``certificate.json``: this identity, the hashes of the attached ``results.json`` and
        ``protocol.yaml``, and from the results ``document`` the protocol, the model's and
        manifest's hashes and the verdicts."""
        model = document.get("model", {})
        return {
            "schema": CERTIFICATE_SCHEMA,
            "certificate_id": self.id,
            "audit_id": self.audit_id,
            "issued": self.issued.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "issuer": self.issuer,
            "service_version": self.service_version,
            "git_revision": self.git_revision,
            "verify_url": self.verify_url,
            "results_sha256": results_sha256,
            "protocol_yaml_sha256": protocol_yaml_sha256,
            "protocol": document.get("protocol"),
            "model_sha256": model.get("sha256"),
            "manifest_sha256": model.get("manifest_sha256"),
            "manifest": self.manifest,
            "verdicts": document.get("verdicts"),
            "event_chain": self.event_chain,
        }
