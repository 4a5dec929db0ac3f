"""Service settings (pydantic-settings): environment variables, then defaults.

With no configuration the service runs *embedded*: SQLite under the data directory and a Celery
broker that needs no server (kombu's filesystem transport, also under the data directory).
``DATABASE_URL`` (``postgresql+psycopg://...``) and ``BROKER_URL`` (``redis://...``) switch to
the production services.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.sandbox import Limits

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECON_AUDIT_", extra="ignore")

    #: everything the embedded service keeps: the SQLite file, the broker's folders, the store
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "RECON_AUDIT_DATABASE_URL")
    )
    broker_url: str | None = Field(
        None, validation_alias=AliasChoices("BROKER_URL", "RECON_AUDIT_BROKER_URL")
    )
    #: content-addressed storage of uploads and audit artefacts (a shared volume in production)
    storage_dir: Path | None = None
    #: the largest upload accepted (model, manifest and referenced files together)
    max_upload_bytes: int = 512 * 2**20
    #: the largest test image upload
    max_image_bytes: int = 64 * 2**20
    #: per audit: soft and hard time limits (seconds) of the worker task
    audit_soft_time_limit: int = 3 * 3600
    audit_time_limit: int = 3 * 3600 + 300
    #: the jail untrusted models run in (app/sandbox.py, docs/security.md): the bubblewrap
    #: binary; where it cannot run, models are refused (503), never run outside it
    sandbox_bwrap: str = "bwrap"
    #: each jailed run's limits: CPU seconds, memory (bytes of heap and private mappings), the
    #: largest file it may write, processes and threads of the jail's uid, the size of its /tmp
    sandbox_cpu_seconds: int = 6 * 3600
    sandbox_memory_bytes: int = 8 * 2**30
    sandbox_file_bytes: int = 2 * 2**30
    sandbox_processes: int = 512
    sandbox_tmp_bytes: int = 256 * 2**20
    #: upload validation in the sandbox (seconds)
    inspect_timeout: int = 300
    #: uploads (models and image sets) checked in the jail at once on this host, all users
    #: together; each user's uploads are checked one at a time (more get 429 or 503)
    max_inspections: int = 2
    #: the ``Retry-After`` seconds an upload refused for a busy inspection is told to wait
    inspection_retry_after: int = 10
    #: device for audits (cpu or cuda)
    device: str = "cpu"
    #: seconds before an unacknowledged task is redelivered by Redis (a worker that died)
    broker_visibility_timeout: int = 3600
    #: seconds a worker's hold on a running audit or shard lasts unless renewed (it renews it
    #: every quarter of that while it runs): a worker that dies without a word is taken over
    #: after it, by every broker; one that dies on this host is taken over at once
    lease_seconds: int = 60
    #: run an audit's tests as separate tasks, so several workers share one audit
    fan_out: bool = True
    #: the certificates' signing key and certificate chain (PKCS#12), read by the signer
    #: process only; None: the signing certificate in the pki folder (``signing_dir``)
    signing_pkcs12: Path | None = None
    signing_pkcs12_password: str | None = None
    #: with ``signing_pkcs12``: the operator's CA certificates (PEM) that verifiers trust
    signing_pkcs12_ca: Path | None = None
    #: the signer's folder (None: ``data_dir/pki``): the CA's certificate, the signing key and
    #: certificate, the CA-signed list of the signers it issued; only the signer reads the key
    signing_dir: Path | None = None
    #: where verifiers read the CA's certificate and signed list (None: the pki folder); the
    #: signer process copies them there when it is another folder (docker-compose.yml)
    trust_dir: Path | None = None
    #: the signer process's Unix socket (None: ``data_dir/signer.sock``)
    signer_socket: Path | None = None
    #: seconds a signing request waits for the signer process's answer
    signer_timeout: int = 120
    #: an RFC 3161 timestamp authority for the signatures (None: no trusted timestamp)
    timestamp_url: str | None = None
    #: the Celery queue audits are sent to and workers consume
    queue: str = "recon-audit"
    #: where signed checkpoints of the audit log's head are written (None: ``data_dir/
    #: checkpoints``); point it at storage the database's administrators cannot rewrite
    checkpoint_dir: Path | None = None
    #: the most audits one user may have queued or running at once (0: no limit); more get 429
    max_active_audits: int = 10
    #: the ``Retry-After`` seconds a refused audit (the limit above) is told to wait
    active_audits_retry_after: int = 60
    #: the ``Retry-After`` seconds an audit refused because the broker is down is told to wait
    broker_retry_after: int = 30
    #: seconds after its creation an audit still unsent is sent by the workers' sweep (the API
    #: sends it at once; this leaves that send its moment)
    outbox_grace_seconds: int = 10

    def sandbox_limits(self, cpu_seconds: int | None = None) -> Limits:
        """The jail's limits (``cpu_seconds`` overrides the CPU time)."""
        return Limits(
            cpu_seconds=cpu_seconds or self.sandbox_cpu_seconds,
            memory_bytes=self.sandbox_memory_bytes,
            file_bytes=self.sandbox_file_bytes,
            processes=self.sandbox_processes,
            tmp_bytes=self.sandbox_tmp_bytes,
        )

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'recon-audit.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def locks_dir(self) -> Path:
        """Lock files that serialise work across this host's processes (upload checks)."""
        return (self.data_dir / "locks").resolve()

    @property
    def pki_dir(self) -> Path:
        """The signer's folder: the CA's certificate, the signing key and certificate and the
        CA-signed list of signers (:mod:`app.certificates.pki`)."""
        return (self.signing_dir or self.data_dir / "pki").resolve()

    @property
    def trust_folder(self) -> Path:
        """Where verifiers find the CA's certificate and its signed list of signers."""
        return (self.trust_dir or self.pki_dir).resolve()

    @property
    def signer_address(self) -> Path:
        return (self.signer_socket or self.data_dir / "signer.sock").resolve()

    @property
    def checkpoint_folder(self) -> Path:
        return (self.checkpoint_dir or self.data_dir / "checkpoints").resolve()

    @property
    def store_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "store").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
