"""The service's signing identity, and what verifiers trust.

The pki folder (:attr:`~app.settings.Settings.pki_dir`: ``RECON_AUDIT_SIGNING_DIR``, default
``data_dir/pki``; folder 0700) holds:

* ``ca.pem`` -- the CA's certificate ("recon-audit service CA", ECDSA P-256, 20 years, may sign
  certificates only: ``keyCertSign``, ``cRLSign``, path length 0);
* ``signer.pem`` / ``signer.key`` (0600) -- the signing certificate ("recon-audit service",
  ECDSA P-256, 10 years, ``digitalSignature`` and ``nonRepudiation``) and its key, which only
  the signer process reads (:mod:`app.certificates.signer`);
* ``signers.json`` -- the CA-signed list of the signing certificates the CA issued (their
  SHA-256 fingerprints), with the revoked ones marked (:class:`SignerList`);
* ``retired/<CA fingerprint>/`` -- an earlier CA's ``ca.pem`` and last ``signers.json``, still
  trusted for what its signers signed (``admin issue-signer`` with another CA retires the old).

The CA's private key is never in this folder. Either it lives offline (``recon-audit admin
ca-init``, :mod:`app.certificates.authority`), or, for the embedded default, the service's
first use creates the CA in memory, issues the signer and the list, writes the four files and
discards the CA's key. A folder from an older installation that still holds ``ca.key`` is
migrated on first use: the key signs the list once and is deleted.

Verifiers trust a certificate that chains to a CA in the trust folder
(:attr:`~app.settings.Settings.trust_folder`, default the pki folder) only when that CA's
signed list names it and does not mark it revoked (:class:`Trust`). A configured PKCS#12 is the
operator's own PKI: its CA certificates (``signing_pkcs12_ca``) are trusted as they are, with
no list.

Creation is idempotent and safe when several processes start at once: the files are written
into a private temporary folder beside ``pki`` that is then renamed to ``pki`` in one step; a
process that loses the race discards its own folder and uses the winner's. Verification never
creates anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
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
    "LIST_SCHEMA",
    "SIGNER_NAME",
    "Authority",
    "LocalPki",
    "PkiError",
    "ServiceSigner",
    "SignerList",
    "Trust",
    "ensure_local_pki",
    "fingerprint",
    "issue_signer_certificate",
    "load_certificate",
    "load_service_signer",
    "new_ca",
    "publish_trust",
    "trust",
    "write_key",
]

log = logging.getLogger(__name__)

CA_NAME = "recon-audit service CA"
#: the signer's printed name, in the signature field and in the certificate's signature block
SIGNER_NAME = "recon-audit service"
ORGANISATION = "recon-audit"
FILES = ("ca.pem", "signer.pem", "signer.key", "signers.json")
CA_YEARS, SIGNER_YEARS = 20, 10
LIST_SCHEMA = "recon-audit/signers/v1"


class PkiError(AppError):
    """The signing key or certificates cannot be created or loaded."""

    status_code = 500


@dataclass(frozen=True)
class LocalPki:
    """The pki folder's files (see the module)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def signer_cert(self) -> Path:
        return self.folder / "signer.pem"

    @property
    def signer_key(self) -> Path:
        return self.folder / "signer.key"

    @property
    def signer_list(self) -> Path:
        return self.folder / "signers.json"

    @property
    def legacy_ca_key(self) -> Path:
        """Where older installations kept the CA's private key (migrated away on first use)."""
        return self.folder / "ca.key"

    @property
    def retired(self) -> Path:
        return self.folder / "retired"

    def complete(self) -> bool:
        return all((self.folder / name).is_file() for name in FILES)


@dataclass(frozen=True)
class ServiceSigner:
    """What signs: the pyHanko signer, the RFC 3161 timestamp authority (``None``: no
    timestamp) and where the key came from."""

    signer: Signer
    timestamp_url: str | None = None
    source: str = ""


def fingerprint(cert: x509.Certificate) -> str:
    """A certificate's SHA-256 fingerprint (of its DER), lower-case hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _name(common_name: str, installation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, installation),
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


def _validity() -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(minutes=5), now  # tolerate small clock differences between machines


def new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA key and its self-signed certificate; its name carries a random installation id
    (``OU=installation 3f2a...``), so two services' CAs are told apart by name."""
    start, now = _validity()
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(CA_NAME, f"installation {secrets.token_hex(6)}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign_documents=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_signer_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new signing key and its certificate, issued by the CA (the CA's installation id in its
    name)."""
    start, now = _validity()
    key = ec.generate_private_key(ec.SECP256R1())
    installation = str(ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(SIGNER_NAME, installation))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + timedelta(days=365 * SIGNER_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign_documents=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """``data`` as ``path``, replaced in one step (a reader sees the old file or the new one)."""
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key, PEM (PKCS#8), mode 0600 from its creation."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(path, data, 0o600)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    _atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _body(document: dict[str, Any]) -> bytes:
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _entry(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "sha256": fingerprint(cert),
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_after": _utc(cert.not_valid_after_utc),
        "revoked": None,
    }


@dataclass(frozen=True)
class SignerList:
    """The CA-signed list of the signing certificates a CA issued (``signers.json``): its
    ``sequence`` grows with every list the CA signs; each entry holds a certificate's
    ``sha256``, ``subject``, ``serial``, ``not_after`` and ``revoked`` (``None``, or ``{"at",
    "reason"}``)."""

    document: dict[str, Any]

    @property
    def sequence(self) -> int:
        return int(self.document["sequence"])

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.document["signers"])

    def entry(self, sha256: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["sha256"] == sha256), None)

    @classmethod
    def sign(
        cls,
        ca_key: ec.EllipticCurvePrivateKey,
        ca: x509.Certificate,
        entries: list[dict[str, Any]],
        sequence: int,
    ) -> SignerList:
        document: dict[str, Any] = {
            "schema": LIST_SCHEMA,
            "ca_sha256": fingerprint(ca),
            "sequence": sequence,
            "signed": _utc(datetime.now(UTC).replace(microsecond=0)),
            "signers": entries,
        }
        signature = ca_key.sign(_body(document), ec.ECDSA(hashes.SHA256()))
        document["signature"] = base64.b64encode(signature).decode()
        return cls(document)

    def with_signer(
        self, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cert: x509.Certificate
    ) -> SignerList:
        """The next list: this one's entries and ``cert``."""
        return SignerList.sign(ca_key, ca, [*self.entries, _entry(cert)], self.sequence + 1)

    def with_revoked(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca: x509.Certificate,
        sha256: str,
        reason: str,
    ) -> SignerList:
        """The next list, with the certificate ``sha256`` marked revoked now."""
        if self.entry(sha256) is None:
            raise PkiError(f"the CA issued no signing certificate {sha256}")
        at = _utc(datetime.now(UTC).replace(microsecond=0))
        entries = [
            {**e, "revoked": e["revoked"] or {"at": at, "reason": reason}}
            if e["sha256"] == sha256
            else e
            for e in self.entries
        ]
        return SignerList.sign(ca_key, ca, entries, self.sequence + 1)

    def write(self, path: Path) -> None:
        _atomic_write(path, json.dumps(self.document, indent=2, sort_keys=True).encode(), 0o644)

    @classmethod
    def read(cls, path: Path, ca: x509.Certificate) -> SignerList:
        """The list at ``path``, checked: its schema, that it is this CA's and that the CA's
        key signed it; :class:`PkiError` saying what is wrong."""
        try:
            document = json.loads(path.read_bytes())
            signature = base64.b64decode(document["signature"], validate=True)
            if document.get("schema") != LIST_SCHEMA or not isinstance(document["signers"], list):
                raise ValueError(f"not a {LIST_SCHEMA} document")
            int(document["sequence"])
        except FileNotFoundError as exc:
            raise PkiError(f"{path.name} (its signed list of signers) is missing") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"{path.name} cannot be read: {exc}") from exc
        if document.get("ca_sha256") != fingerprint(ca):
            raise PkiError(f"{path.name} is the list of another CA")
        public = ca.public_key()
        try:
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise InvalidSignature(f"unsupported CA key {type(public).__name__}")
            public.verify(signature, _body(document), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise PkiError(f"{path.name}: the CA's signature on it does not verify") from exc
        return cls(document)


def load_certificate(path: Path) -> asn1_x509.Certificate:
    """A PEM certificate as pyHanko wants it (asn1crypto)."""
    return _asn1(_load_x509(path))


def _load_x509(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load the certificate {path}: {exc}") from exc


def _asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


# --- creation and migration -----------------------------------------------------------------


def _create(folder: Path) -> None:
    """Write a new CA's certificate, a signer it issued and its signed list into ``folder``
    (which exists, mode 0700). The CA's key lives only in this function."""
    ca_key, ca = new_ca()
    signer_key, signer = issue_signer_certificate(ca_key, ca)
    SignerList.sign(ca_key, ca, [_entry(signer)], 1).write(folder / "signers.json")
    write_certificate(folder / "ca.pem", ca)
    write_certificate(folder / "signer.pem", signer)
    write_key(folder / "signer.key", signer_key)


def _migrate(pki: LocalPki) -> None:
    """An older installation's folder (``ca.key`` beside the rest, no list): the CA's key signs
    the list of its one signer once, then it is deleted."""
    try:
        data = pki.legacy_ca_key.read_bytes()
    except FileNotFoundError:
        return  # another process migrated it
    except OSError as exc:
        raise PkiError(f"cannot read {pki.legacy_ca_key} to migrate it: {exc}") from exc
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{pki.legacy_ca_key} is not the service's CA key (ECDSA)")
    if not pki.signer_list.is_file():
        ca, signer = _load_x509(pki.ca_cert), _load_x509(pki.signer_cert)
        SignerList.sign(key, ca, [_entry(signer)], 1).write(pki.signer_list)
    pki.legacy_ca_key.unlink(missing_ok=True)
    log.warning(
        "migrated %s: the CA's private key (ca.key) signed the list of its signers "
        "(signers.json) once and was deleted from the serving machine. It was readable there: "
        "where that machine may have been read, replace the CA (recon-audit admin ca-init, "
        "then admin issue-signer; docs/security.md)",
        pki.folder,
    )


def ensure_local_pki(folder: Path) -> LocalPki:
    """The pki folder, created when missing and migrated from ``ca.key`` (see the module)."""
    pki = LocalPki(folder)
    if pki.legacy_ca_key.exists():
        _migrate(pki)
    if pki.complete():
        return pki
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))  # 0700
    try:
        _create(scratch)
        try:
            os.rename(scratch, folder)  # atomic; replaces an empty folder, fails on a full one
            log.warning(
                "created the service's CA and signing certificate in %s; the CA's private key "
                "was discarded, never written: this CA can issue no other signer (for that, "
                "an offline CA: recon-audit admin ca-init, admin issue-signer)",
                folder,
            )
        except OSError:
            pass  # another process won the race
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not pki.complete():
        raise PkiError(f"{folder} exists but does not hold {', '.join(FILES)}")
    return pki


# --- signing ------------------------------------------------------------------------------


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


def _pkcs12_signer(path: Path, password: str | None) -> SimpleSigner:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read the signing PKCS#12 {path}: {exc}") from exc
    try:
        signer: SimpleSigner = SimpleSigner.load_pkcs12_data(
            data, other_certs=(), passphrase=password.encode() if password else None
        )
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the signing PKCS#12 {path}: {exc}") from exc
    return signer


def load_service_signer(settings: Settings) -> ServiceSigner:
    """The configured PKCS#12, else the pki folder's signing key (the folder created when
    missing). Only the signer process (and a user's own ``recon-audit audit --sign``) calls
    this: it reads the private key."""
    if settings.signing_pkcs12 is not None:
        return ServiceSigner(
            signer=_pkcs12_signer(settings.signing_pkcs12, settings.signing_pkcs12_password),
            timestamp_url=settings.timestamp_url,
            source=f"PKCS#12 {settings.signing_pkcs12}",
        )
    pki = ensure_local_pki(settings.pki_dir)
    return ServiceSigner(
        signer=_local_signer(pki),
        timestamp_url=settings.timestamp_url,
        source=f"local CA {pki.folder}",
    )


# --- trust --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """A trusted CA: its certificate and, for the service's own CAs, its signed list of
    signers (``list_problem``: why that list cannot be used; then nothing the CA issued is
    trusted). An operator's CA (``signing_pkcs12_ca``) has neither."""

    cert: x509.Certificate
    signers: SignerList | None = None
    list_problem: str | None = None

    @property
    def keeps_list(self) -> bool:
        return self.signers is not None or self.list_problem is not None

    def issued(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


Refusal = tuple[Literal["invalid", "unknown"], str]


@dataclass(frozen=True)
class Trust:
    """What a verifier trusts (see the module)."""

    authorities: tuple[Authority, ...] = ()

    @property
    def roots(self) -> list[asn1_x509.Certificate]:
        return [_asn1(a.cert) for a in self.authorities]

    def refusal(self, cert: x509.Certificate) -> Refusal | None:
        """Why a certificate issued by a trusted CA is still not to be trusted: not on its
        CA's signed list (``invalid``), revoked there (``invalid``), or the list unusable
        (``unknown``); ``None`` when it is listed, or its CA keeps no list, or no trusted CA
        issued it (the chain's check says so)."""
        for authority in self.authorities:
            if not authority.keeps_list or not authority.issued(cert):
                continue
            if authority.signers is None:
                problem = authority.list_problem
                return "unknown", f"its CA's list of signers cannot be used: {problem}"
            sha = fingerprint(cert)
            entry = authority.signers.entry(sha)
            if entry is None:
                return (
                    "invalid",
                    f"its certificate (SHA-256 {sha}) was not issued as a signer: its CA's "
                    "signed list of signers does not hold it",
                )
            if entry["revoked"]:
                revoked = entry["revoked"]
                return (
                    "invalid",
                    f"its certificate (SHA-256 {sha}) was revoked on {revoked['at']} "
                    f"({revoked['reason']})",
                )
            return None
        return None

    def trusts(self, cert: x509.Certificate) -> bool:
        """A trusted CA issued it and nothing refuses it (checkpoints' certificates)."""
        return any(a.issued(cert) for a in self.authorities) and self.refusal(cert) is None


def _authority(place: Path) -> Authority:
    cert = _load_x509(place / "ca.pem")
    try:
        return Authority(cert, SignerList.read(place / "signers.json", cert))
    except PkiError as exc:
        return Authority(cert, list_problem=exc.message)


def trust(settings: Settings) -> Trust:
    """The trust folder's CAs (the current one and the retired ones) with their lists, and the
    operator's CA certificates (``signing_pkcs12_ca``); nothing is created."""
    folder = settings.trust_folder
    places = [folder, *sorted((folder / "retired").glob("*"))]
    authorities = [_authority(p) for p in places if (p / "ca.pem").is_file()]
    if settings.signing_pkcs12_ca is not None:
        try:
            operator = x509.load_pem_x509_certificates(settings.signing_pkcs12_ca.read_bytes())
        except (OSError, ValueError) as exc:
            where = settings.signing_pkcs12_ca
            raise PkiError(f"cannot load the CA certificates {where}: {exc}") from exc
        authorities += [Authority(cert) for cert in operator]
    return Trust(tuple(authorities))


def publish_trust(settings: Settings) -> None:
    """Copy the pki folder's public files (``ca.pem``, ``signers.json`` and the retired CAs')
    to the trust folder, when that is another folder: verifiers there never see the key."""
    source, target = settings.pki_dir, settings.trust_folder
    if source == target or not (source / "ca.pem").is_file():
        return
    places = [Path(), *(p.relative_to(source) for p in sorted((source / "retired").glob("*")))]
    for place in places:
        (target / place).mkdir(parents=True, exist_ok=True)
        for name in ("ca.pem", "signers.json"):
            if (source / place / name).is_file():
                _atomic_write(target / place / name, (source / place / name).read_bytes(), 0o644)
