"""The offline CA: a folder kept off the machines that serve requests or run audits (a USB key,
an air-gapped machine), used by ``recon-audit admin ca-init``, ``issue-signer`` and
``revoke-signer``.

The CA folder holds ``ca.pem``, ``ca.key`` (0600; folder 0700) and ``signers.json``: the last
list of signers the CA signed (:class:`app.certificates.pki.SignerList`). ``issue-signer``
writes a new signing key and certificate, with the CA's certificate and the new list, into the
service's pki folder; ``revoke-signer`` marks a signer revoked in a new list. The pki folder
never receives the CA's key.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.certificates.pki import (
    LocalPki,
    PkiError,
    SignerList,
    ensure_local_pki,
    fingerprint,
    issue_signer_certificate,
    new_ca,
    publish_trust,
    write_certificate,
    write_key,
)
from app.settings import Settings

__all__ = ["OfflineCa", "init_ca", "issue_signer", "revoke_signer"]


@dataclass(frozen=True)
class OfflineCa:
    """An offline CA folder, opened: its key, its certificate and its last signed list."""

    folder: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    signers: SignerList

    @classmethod
    def open(cls, folder: Path) -> OfflineCa:
        try:
            key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"{folder} is not a CA folder (admin ca-init): {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{folder / 'ca.key'} is not an ECDSA key")
        return cls(folder, key, cert, SignerList.read(folder / "signers.json", cert))

    def record(self, signers: SignerList) -> None:
        signers.write(self.folder / "signers.json")


def init_ca(folder: Path) -> x509.Certificate:
    """A new CA in ``folder`` (created, mode 0700; it must not hold a CA already), with an
    empty signed list."""
    if (folder / "ca.key").exists() or (folder / "ca.pem").exists():
        raise PkiError(f"{folder} holds a CA already")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key, cert = new_ca()
    write_key(folder / "ca.key", key)
    write_certificate(folder / "ca.pem", cert)
    SignerList.sign(key, cert, [], 0).write(folder / "signers.json")
    return cert


def _retire(pki: LocalPki, ca: x509.Certificate) -> str | None:
    """Where the pki folder holds another CA: move its ``ca.pem`` and ``signers.json`` to
    ``retired/<its fingerprint>/`` (still trusted for what its signers signed); returns that
    fingerprint."""
    if not pki.ca_cert.is_file():
        return None
    current = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    if current == ca:
        return None
    old = fingerprint(current)
    place = pki.retired / old
    place.mkdir(parents=True, exist_ok=True)
    for path in (pki.ca_cert, pki.signer_list):
        if path.is_file():
            shutil.copy2(path, place / path.name)
    return old


def issue_signer(ca_folder: Path, settings: Settings) -> tuple[x509.Certificate, str | None]:
    """A new signing key and certificate from the offline CA, installed in the pki folder with
    the CA's certificate and the new signed list (recorded in the CA folder too); returns the
    certificate and the fingerprint of the CA it replaced there (``None``: the same CA)."""
    ca = OfflineCa.open(ca_folder)
    pki = LocalPki(settings.pki_dir)
    if pki.legacy_ca_key.exists():
        ensure_local_pki(pki.folder)  # an older installation: migrated first
    pki.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(pki.folder, 0o700)
    retired = _retire(pki, ca.cert)
    key, cert = issue_signer_certificate(ca.key, ca.cert)
    signers = ca.signers.with_signer(ca.key, ca.cert, cert)
    ca.record(signers)
    write_certificate(pki.ca_cert, ca.cert)
    signers.write(pki.signer_list)
    write_key(pki.signer_key, key)
    write_certificate(pki.signer_cert, cert)
    publish_trust(settings)
    return cert, retired


def revoke_signer(ca_folder: Path, settings: Settings, sha256: str, reason: str) -> SignerList:
    """Mark the CA's signer ``sha256`` (a full fingerprint or a unique prefix of 8 or more hex
    digits) revoked in a new signed list, recorded in the CA folder and installed in the pki
    folder where that folder holds this CA."""
    ca = OfflineCa.open(ca_folder)
    wanted = sha256.strip().lower()
    matches = [e["sha256"] for e in ca.signers.entries if e["sha256"].startswith(wanted)]
    if len(wanted) < 8 or len(matches) != 1:
        raise PkiError(
            f"{sha256!r} names {len(matches)} of this CA's signers: give its SHA-256 "
            "fingerprint (8 or more hex digits that name one)"
        )
    signers = ca.signers.with_revoked(ca.key, ca.cert, matches[0], reason)
    ca.record(signers)
    pki = LocalPki(settings.pki_dir)
    current = pki.ca_cert.read_bytes() if pki.ca_cert.is_file() else None
    if current is not None and x509.load_pem_x509_certificate(current) == ca.cert:
        signers.write(pki.signer_list)
    else:
        place = pki.retired / fingerprint(ca.cert)
        if (place / "ca.pem").is_file():
            signers.write(place / "signers.json")
    publish_trust(settings)
    return signers
