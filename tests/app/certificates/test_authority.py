"""The offline CA through the operator's commands (``admin ca-init``, ``issue-signer``,
``revoke-signer``) and what offline ``recon-audit verify`` then says: the attack of the issue
(a second signer issued with the CA's stolen key signs an edited certificate) is refused, so is
a revoked signer, a genuine certificate stays valid, and a CA replaced by an offline one stays
trusted for what its signer signed. The CA's key never reaches the pki folder."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from pyhanko.sign.signers import SimpleSigner

from app.certificates.authority import OfflineCa
from app.certificates.pki import (
    FILES,
    ServiceSigner,
    fingerprint,
    issue_signer_certificate,
    load_service_signer,
    write_certificate,
    write_key,
)
from app.certificates.signing import sign_certificate
from app.cli import main
from app.settings import Settings, get_settings
from tests.app.certificates.conftest import Rendered


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _verify(pdf: bytes, folder: Path) -> tuple[int, dict[str, object]]:
    path = folder / "checked.pdf"
    path.write_bytes(pdf)
    result = _run("verify", str(path))
    report: dict[str, object] = json.loads(result.stdout)
    return result.exit_code, report


def _issue(ca: Path) -> dict[str, str]:
    result = _run("admin", "issue-signer", "--ca", str(ca))
    assert result.exit_code == 0, result.output
    issued: dict[str, str] = json.loads(result.output)
    return issued


def _stolen_key_signer(ca_folder: Path, folder: Path) -> ServiceSigner:
    """A signer of the attacker's: issued with the CA's key, never listed by the CA."""
    ca = OfflineCa.open(ca_folder)
    key, cert = issue_signer_certificate(ca.key, ca.cert)
    write_key(folder / "forged.key", key)
    write_certificate(folder / "forged.pem", cert)
    signer = SimpleSigner.load(  # type: ignore[no-untyped-call]
        str(folder / "forged.key"), str(folder / "forged.pem")
    )
    assert signer is not None
    return ServiceSigner(signer)


def test_an_offline_ca_issues_and_revokes_and_verify_refuses_what_it_did_not_list(
    settings: Settings, tmp_path: Path, rendered: Rendered
) -> None:
    ca = tmp_path / "offline-ca"
    created = _run("admin", "ca-init", "--out", str(ca))
    assert created.exit_code == 0, created.output
    assert sorted(p.name for p in ca.iterdir()) == ["ca.key", "ca.pem", "signers.json"]
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert _run("admin", "ca-init", "--out", str(ca)).exit_code == 2  # never overwritten

    issued = _issue(ca)
    assert issued["retired_ca"] is None
    pki = settings.pki_dir
    assert sorted(p.name for p in pki.iterdir()) == sorted(FILES)  # no ca.key there
    assert (pki / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    genuine = sign_certificate(rendered.pdf, load_service_signer(settings))
    code, report = _verify(genuine, tmp_path)
    assert (code, report["status"]) == (0, "valid"), report["reason"]

    # the attack: the CA's key, stolen, issues a second signer that signs an edited copy
    forged = sign_certificate(rendered.pdf, _stolen_key_signer(ca, tmp_path))
    code, report = _verify(forged, tmp_path)
    assert code == 1
    assert report["status"] == "invalid"
    assert "was not issued as a signer" in str(report["reason"])

    # a second, listed signer; revoked, what it signed is refused and the first stays valid
    second = _issue(ca)
    later = sign_certificate(rendered.pdf, load_service_signer(settings))
    assert _verify(later, tmp_path)[0] == 0
    revoked = _run("admin", "revoke-signer", "--ca", str(ca), second["sha256"][:10])
    assert revoked.exit_code == 0, revoked.output
    assert [e["sha256"] for e in json.loads(revoked.output)["revoked"]] == [second["sha256"]]
    code, report = _verify(later, tmp_path)
    assert code == 1
    assert "was revoked on" in str(report["reason"])
    assert _verify(genuine, tmp_path)[0] == 0
    unknown = _run("admin", "revoke-signer", "--ca", str(ca), "0000000000")
    assert unknown.exit_code == 2
    assert "names 0 of this CA's signers" in unknown.output
    # the CA folder keeps the list it signed last
    assert json.loads((ca / "signers.json").read_text()) == json.loads(
        (pki / "signers.json").read_text()
    )


def test_an_embedded_ca_replaced_by_an_offline_one_stays_trusted_for_what_it_signed(
    settings: Settings, tmp_path: Path, rendered: Rendered
) -> None:
    embedded = load_service_signer(settings)  # the first use: a CA whose key was discarded
    old = sign_certificate(rendered.pdf, embedded)
    old_ca = x509.load_pem_x509_certificate((settings.pki_dir / "ca.pem").read_bytes())
    ca = tmp_path / "offline-ca"
    assert _run("admin", "ca-init", "--out", str(ca)).exit_code == 0
    issued = _issue(ca)
    assert issued["retired_ca"] == fingerprint(old_ca)
    retired = settings.pki_dir / "retired" / fingerprint(old_ca)
    assert sorted(p.name for p in retired.iterdir()) == ["ca.pem", "signers.json"]
    new = sign_certificate(rendered.pdf, load_service_signer(settings))
    assert _verify(old, tmp_path)[0] == 0
    assert _verify(new, tmp_path)[0] == 0


def test_a_separate_trust_folder_gets_the_public_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECON_AUDIT_SIGNING_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("RECON_AUDIT_TRUST_DIR", str(tmp_path / "data" / "trust"))
    get_settings.cache_clear()
    try:
        ca = tmp_path / "offline-ca"
        assert _run("admin", "ca-init", "--out", str(ca)).exit_code == 0
        _issue(ca)
    finally:
        get_settings.cache_clear()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == sorted(FILES)
    assert sorted(p.name for p in (tmp_path / "data" / "trust").iterdir()) == [
        "ca.pem",
        "signers.json",
    ]
