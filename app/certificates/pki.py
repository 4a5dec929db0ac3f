"""The service's signing identity.

A PKCS#12 file configured in the settings (``signing_pkcs12``, ``signing_pkcs12_password``) is
used as it is. Without one, the service creates its own certificate authority and a signing
certificate on first use, under ``data_dir/pki`` (folder mode 0700, private keys 0600):

* ``ca.pem`` / ``ca.key`` -- "recon-audit service CA", ECDSA P-256, 20 years, may sign
  certificates only (``keyCertSign``, ``cRLSign``, path length 0);
* ``signer.pem`` / ``signer.key`` -- "recon-audit service", ECDSA P-256, 10 years, issued by
  the CA, key usage ``digitalSignature`` and ``nonRepudiation`` (``contentCommitment``).

Both names carry a random installation id (``OU=installation 3f2a...``), so two services' CAs
are told apart by name.

Creation is idempotent and safe when several processes (the API, workers) start at once: the
four files are written into a private temporary folder beside ``pki`` that is then renamed to
``pki`` in one step; a process that loses the race discards its own folder and uses the
winner's. Verification never creates anything: it trusts the CA that is there (or none).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyhanko.keys import load_private_key_from_pemder
from pyhanko.sign.signers import Signer, SimpleSigner
from pyhanko_certvalidator.registry import SimpleCertificateStore

from app.errors import AppError
from app.settings import Settings

__all__ = [
    "CA_NAME",
    "SIGNER_NAME",
    "LocalPki",
    "PkiError",
    "ServiceSigner",
    "ensure_local_pki",
    "load_certificate",
    "load_service_signer",
    "trust_roots",
]

CA_NAME = "recon-audit service CA"
#: the signer's printed name, in the signature field and in the certificate's signature block
SIGNER_NAME = "recon-audit service"
ORGANISATION = "recon-audit"
FILES = ("ca.pem", "ca.key", "signer.pem", "signer.key")
CA_YEARS, SIGNER_YEARS = 20, 10


class PkiError(AppError):
    """The signing key or certificates cannot be created or loaded."""

    status_code = 500


@dataclass(frozen=True)
class LocalPki:
    """The service's own CA and signing certificate (PEM files in ``folder``)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def signer_cert(self) -> Path:
        return self.folder / "signer.pem"

    @property
    def signer_key(self) -> Path:
        return self.folder / "signer.key"

    def complete(self) -> bool:
        return all((self.folder / name).is_file() for name in FILES)


@dataclass(frozen=True)
class ServiceSigner:
    """What signs: the pyHanko signer, the roots a verifier trusts, the RFC 3161 timestamp
    authority (``None``: no timestamp) and where the key came from."""

    signer: Signer
    roots: list[asn1_x509.Certificate] = field(default_factory=list)
    timestamp_url: str | None = None
    source: str = ""


def _name(common_name: str, installation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"installation {installation}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        ]
    )


def _usage(*, sign_documents: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign_documents,
        content_commitment=sign_documents,  # nonRepudiation
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not sign_documents,
        crl_sign=not sign_documents,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _create(folder: Path) -> None:
    """Write a new CA and signing certificate into ``folder`` (which exists, mode 0700)."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=5)  # tolerate small clock differences between machines
    installation = secrets.token_hex(6)  # tells one service's CA from another's by name
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(CA_NAME, installation)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign_documents=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(_name(SIGNER_NAME, installation))
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + timedelta(days=365 * SIGNER_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign_documents=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(folder / "ca.key", ca_key)
    _write_cert(folder / "ca.pem", ca)
    _write_key(folder / "signer.key", signer_key)
    _write_cert(folder / "signer.pem", signer)


def ensure_local_pki(folder: Path) -> LocalPki:
    """The CA and signing certificate in ``folder``, created when missing (see the module)."""
    pki = LocalPki(folder)
    if pki.complete():
        return pki
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))  # 0700
    try:
        _create(scratch)
        try:
            os.rename(scratch, folder)  # atomic; replaces an empty folder, fails on a full one
        except OSError:
            pass  # another process won the race
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not pki.complete():
        raise PkiError(f"{folder} exists but does not hold {', '.join(FILES)}")
    return pki


def load_certificate(path: Path) -> asn1_x509.Certificate:
    """A PEM certificate as pyHanko wants it (asn1crypto)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load the certificate {path}: {exc}") from exc
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _local_signer(pki: LocalPki) -> SimpleSigner:
    registry = SimpleCertificateStore.from_certs(  # type: ignore[no-untyped-call]
        [load_certificate(pki.ca_cert)]
    )
    try:
        key = load_private_key_from_pemder(str(pki.signer_key), passphrase=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the signing key {pki.signer_key}: {exc}") from exc
    return SimpleSigner(
        signing_cert=load_certificate(pki.signer_cert),
        signing_key=key,
        cert_registry=registry,
    )


def _pkcs12_signer(path: Path, password: str | None) -> tuple[Signer, list[asn1_x509.Certificate]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read the signing PKCS#12 {path}: {exc}") from exc
    try:
        signer = SimpleSigner.load_pkcs12_data(
            data, other_certs=(), passphrase=password.encode() if password else None
        )
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the signing PKCS#12 {path}: {exc}") from exc
    cert = signer.signing_cert
    assert cert is not None
    chain = [c for c in signer.cert_registry if c.dump() != cert.dump()]
    roots = [c for c in chain if c.subject == c.issuer] or chain or [cert]
    return signer, roots


def _roots_of(pki: LocalPki) -> list[asn1_x509.Certificate]:
    return [load_certificate(pki.ca_cert)] if pki.ca_cert.is_file() else []


def load_service_signer(settings: Settings) -> ServiceSigner:
    """The configured PKCS#12, else the local CA's signing certificate (created when missing)."""
    local = LocalPki(settings.pki_dir)
    if settings.signing_pkcs12 is not None:
        signer, roots = _pkcs12_signer(settings.signing_pkcs12, settings.signing_pkcs12_password)
        return ServiceSigner(
            signer=signer,
            roots=roots + _roots_of(local),
            timestamp_url=settings.timestamp_url,
            source=f"PKCS#12 {settings.signing_pkcs12}",
        )
    pki = ensure_local_pki(local.folder)
    return ServiceSigner(
        signer=_local_signer(pki),
        roots=_roots_of(pki),
        timestamp_url=settings.timestamp_url,
        source=f"local CA {pki.folder}",
    )


def trust_roots(settings: Settings) -> list[asn1_x509.Certificate]:
    """What a verifier trusts: the configured PKCS#12's CA certificates and the local CA, when
    they exist (nothing is created)."""
    roots = _roots_of(LocalPki(settings.pki_dir))
    if settings.signing_pkcs12 is not None and settings.signing_pkcs12.is_file():
        roots = _pkcs12_signer(settings.signing_pkcs12, settings.signing_pkcs12_password)[1] + roots
    return roots
