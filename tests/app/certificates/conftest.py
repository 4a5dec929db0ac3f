"""Certificate fixtures: one small audit (the structural test only, a 48x48 network) rendered
once as a PDF/A-3b certificate; the service's PKI in a temporary data directory; the signed and
the approved PDF."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.certificates.identity import Certificate
from app.certificates.pki import (
    ServiceSigner,
    Trust,
    ensure_local_pki,
    load_service_signer,
    trust,
)
from app.certificates.signing import approve_certificate, sign_certificate
from app.report import ReportFiles, write_report
from app.settings import Settings
from tests.app.report.runs import PROTOCOL_SKIPPING, suite

MANIFEST = {
    "name": "t",
    "modality": "mri",
    "image_size": [48, 48],
    "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.3, "seed": 0}},
    "description": "A test network for certificates",
    "statement": "None of the test images was used to train this network.",
}
APPROVER = "Ada Auditor"


@dataclass(frozen=True)
class Rendered:
    files: ReportFiles
    certificate: Certificate

    @property
    def pdf(self) -> bytes:
        assert self.files.pdf is not None
        return self.files.pdf.read_bytes()


def render(out: Path, certificate: Certificate) -> Rendered:
    """A certificate from the small audit (about a second and a half)."""
    files = write_report(suite(PROTOCOL_SKIPPING), out, certificate=certificate)
    return Rendered(files, certificate)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(tmp_path_factory.mktemp("certificate"), Certificate(manifest=MANIFEST))


@pytest.fixture(scope="session")
def pki_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def signer(pki_settings: Settings) -> ServiceSigner:
    return load_service_signer(pki_settings)


@pytest.fixture(scope="session")
def trusted(pki_settings: Settings) -> Trust:
    """What a verifier trusts there: the CA and its signed list."""
    ensure_local_pki(pki_settings.pki_dir)
    return trust(pki_settings)


@pytest.fixture(scope="session")
def signed(rendered: Rendered, signer: ServiceSigner) -> bytes:
    return sign_certificate(rendered.pdf, signer, approval_box=rendered.files.approval_box)


@pytest.fixture(scope="session")
def approved(signed: bytes, signer: ServiceSigner) -> bytes:
    return approve_certificate(
        signed,
        signer,
        approver=APPROVER,
        comment="Protocol and images fit the intended use.",
        at=datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC),
    )
