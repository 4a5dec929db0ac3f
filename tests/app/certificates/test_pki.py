"""The service's own PKI: created once under data_dir/pki with private files and the CA's key
never written, reused, safe when several processes create it at once; an older installation's
``ca.key`` migrated away; a configured PKCS#12 signs instead."""

from __future__ import annotations

import logging
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pyhanko.sign.signers import SimpleSigner

from app.certificates import ISSUER
from app.certificates.pki import (
    FILES,
    LocalPki,
    PkiError,
    ServiceSigner,
    SignerList,
    ensure_local_pki,
    fingerprint,
    issue_signer_certificate,
    load_service_signer,
    new_ca,
    trust,
    write_certificate,
    write_key,
)
from app.certificates.signing import sign_certificate
from app.certificates.verify import verify_pdf
from app.settings import Settings
from tests.app.certificates.conftest import Rendered


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_keys(folder: Path) -> list[str]:
    """Every file under ``folder`` that holds a private key."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    )


def test_the_pki_is_created_once_and_the_cas_key_is_never_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert trust(settings).authorities == ()  # verifying creates nothing
    assert not settings.pki_dir.exists()
    with caplog.at_level(logging.WARNING, "app.certificates.pki"):
        first = load_service_signer(settings)
    assert "the CA's private key was discarded, never written" in caplog.text
    pki = LocalPki(settings.pki_dir)
    assert pki.complete()
    assert sorted(p.name for p in pki.folder.iterdir()) == sorted(FILES)
    assert _private_keys(settings.data_dir) == ["pki/signer.key"]  # the signer's key only
    assert _mode(pki.folder) == 0o700
    assert _mode(pki.signer_key) == 0o600
    contents = {name: (pki.folder / name).read_bytes() for name in FILES}
    second = load_service_signer(settings)
    assert {name: (pki.folder / name).read_bytes() for name in FILES} == contents
    assert first.signer.signing_cert is not None
    assert second.signer.signing_cert is not None
    assert first.signer.signing_cert.dump() == second.signer.signing_cert.dump()
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["pki"]  # no leftovers

    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.signer_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.content_commitment  # nonRepudiation
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == ISSUER
    # the CA signed the list of its one signer, and verifiers trust exactly that
    listed = SignerList.read(pki.signer_list, ca)
    assert [e["sha256"] for e in listed.entries] == [fingerprint(leaf)]
    (authority,) = trust(settings).authorities
    assert authority.cert == ca
    assert authority.signers == listed
    assert trust(settings).trusts(leaf)


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


def test_an_older_installations_ca_key_signs_the_list_once_and_is_removed(
    tmp_path: Path, rendered: Rendered, caplog: pytest.LogCaptureFixture
) -> None:
    # the layout older versions wrote: ca.key beside the rest, no signed list
    settings = Settings(data_dir=tmp_path / "data")
    folder = settings.pki_dir
    folder.mkdir(parents=True, mode=0o700)
    ca_key, ca = new_ca()
    signer_key, signer = issue_signer_certificate(ca_key, ca)
    write_key(folder / "ca.key", ca_key)
    write_certificate(folder / "ca.pem", ca)
    write_key(folder / "signer.key", signer_key)
    write_certificate(folder / "signer.pem", signer)
    old = sign_certificate(rendered.pdf, _old_signer(folder))
    assert verify_pdf(old, trust(settings)).status == "unknown"  # no list yet: not trusted

    with caplog.at_level(logging.WARNING, "app.certificates.pki"):
        ensure_local_pki(folder)
    assert "ca.key" in caplog.text
    assert "deleted from the serving machine" in caplog.text
    assert not (folder / "ca.key").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert _private_keys(settings.data_dir) == ["pki/signer.key"]
    assert [e["sha256"] for e in SignerList.read(folder / "signers.json", ca).entries] == [
        fingerprint(signer)
    ]
    # what the old signer signed is valid; what the old CA's key signs from now on is not
    assert verify_pdf(old, trust(settings)).status == "valid"
    assert load_service_signer(settings).signer.signing_cert is not None
    _, stolen = issue_signer_certificate(ca_key, ca)  # whoever read ca.key before
    assert not trust(settings).trusts(stolen)
    refusal = trust(settings).refusal(stolen)
    assert refusal is not None
    assert refusal[0] == "invalid"
    ensure_local_pki(folder)  # migrated once: nothing changes the second time
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)


def _old_signer(folder: Path) -> ServiceSigner:
    """The signer of an older installation, to sign a certificate before the upgrade."""

    signer = SimpleSigner.load(  # type: ignore[no-untyped-call]
        str(folder / "signer.key"),
        str(folder / "signer.pem"),
        ca_chain_files=[str(folder / "ca.pem")],
    )
    assert signer is not None
    return ServiceSigner(signer)


def test_a_configured_pkcs12_signs(tmp_path: Path, rendered: Rendered) -> None:
    # a PKCS#12 made from another local CA's signing key and chain: the operator's own PKI
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
        data_dir=tmp_path / "data",
        signing_pkcs12=bundle,
        signing_pkcs12_password="secret",
        signing_pkcs12_ca=other.ca_cert,
    )
    signer = load_service_signer(settings)
    assert "PKCS#12" in signer.source
    assert not settings.pki_dir.exists()  # no local CA when a key is configured
    (authority,) = trust(settings).authorities  # the operator's CA, which keeps no list here
    assert authority.cert == ca
    assert not authority.keeps_list
    signed = sign_certificate(rendered.pdf, signer)
    assert verify_pdf(signed, trust(settings)).status == "valid"
    # without its CA certificates, the operator's PKI is not trusted
    assert verify_pdf(signed, trust(Settings(data_dir=tmp_path / "data"))).status == "unknown"
    wrong = Settings(data_dir=tmp_path / "data", signing_pkcs12=bundle)
    with pytest.raises(PkiError, match="cannot load"):
        load_service_signer(wrong)
