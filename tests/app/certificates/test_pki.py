"""The service's own CA: created once under data_dir/pki with private files, reused, safe when
several processes create it at once; a configured PKCS#12 signs instead."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from app.certificates import ISSUER
from app.certificates.pki import (
    FILES,
    LocalPki,
    PkiError,
    ensure_local_pki,
    load_service_signer,
    trust_roots,
)
from app.certificates.signing import sign_certificate
from app.certificates.verify import verify_pdf
from app.settings import Settings
from tests.app.certificates.conftest import Rendered


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_created_once_with_private_keys(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert trust_roots(settings) == []  # verifying creates nothing
    assert not settings.pki_dir.exists()
    first = load_service_signer(settings)
    pki = LocalPki(settings.pki_dir)
    assert pki.complete()
    assert _mode(pki.folder) == 0o700
    assert _mode(pki.ca_key) == 0o600
    assert _mode(pki.signer_key) == 0o600
    contents = {name: (pki.folder / name).read_bytes() for name in FILES}
    second = load_service_signer(settings)
    assert {name: (pki.folder / name).read_bytes() for name in FILES} == contents
    assert first.signer.signing_cert is not None
    assert second.signer.signing_cert is not None
    assert first.signer.signing_cert.dump() == second.signer.signing_cert.dump()
    assert [r.dump() for r in trust_roots(settings)] == [r.dump() for r in first.roots]
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["pki"]  # no leftovers

    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.signer_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.content_commitment  # nonRepudiation
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == ISSUER


def test_concurrent_first_use_creates_one_ca(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    with ThreadPoolExecutor(max_workers=6) as pool:
        seen = list(pool.map(lambda _: ensure_local_pki(folder).ca_cert.read_bytes(), range(6)))
    assert len(set(seen)) == 1  # every caller got the same, complete CA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki"]  # the losers cleaned up
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


def test_an_incomplete_pki_folder_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    (folder / "ca.pem").write_text("not a certificate")
    with pytest.raises(PkiError, match="does not hold"):
        ensure_local_pki(folder)


def test_a_configured_pkcs12_signs(tmp_path: Path, rendered: Rendered) -> None:
    # a PKCS#12 made from another local CA's signing key and chain
    other = ensure_local_pki(tmp_path / "other")
    key = serialization.load_pem_private_key(other.signer_key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(other.signer_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(other.ca_cert.read_bytes())
    bundle = tmp_path / "signing.p12"
    bundle.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"signer",
            key,  # type: ignore[arg-type]
            cert,
            [ca],
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    settings = Settings(
        data_dir=tmp_path / "data", signing_pkcs12=bundle, signing_pkcs12_password="secret"
    )
    signer = load_service_signer(settings)
    assert "PKCS#12" in signer.source
    assert not settings.pki_dir.exists()  # no local CA when a key is configured
    assert [r.dump() for r in trust_roots(settings)] == [r.dump() for r in signer.roots]
    signed = sign_certificate(rendered.pdf, signer)
    assert verify_pdf(signed, trust_roots(settings)).status == "valid"
    wrong = Settings(data_dir=tmp_path / "data", signing_pkcs12=bundle)
    with pytest.raises(PkiError, match="cannot load"):
        load_service_signer(wrong)
