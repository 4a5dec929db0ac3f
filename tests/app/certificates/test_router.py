"""Certificates through the API: an auditor's approval (step-up, second signature made by the
signer process, served as the report; the API never opens the signing key) and verification
against the service's CA, its signed list of signers and the database. The service's signer
comes from an offline CA here (``admin issue-signer``), so the tests can play the attacker who
stole that CA's key."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from pyhanko.sign.signers import SimpleSigner
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.certificates.authority import OfflineCa, init_ca, issue_signer, revoke_signer
from app.certificates.identity import Certificate
from app.certificates.pki import (
    LocalPki,
    ServiceSigner,
    fingerprint,
    issue_signer_certificate,
    load_service_signer,
    write_certificate,
    write_key,
)
from app.certificates.signing import sign_certificate
from app.deps import get_store
from app.events import verify_chain
from app.orm import Approval, Audit, AuditEvent, AuditResult, Network, User
from app.settings import Settings, get_settings
from app.storage import Spooled
from tests.app.certificates.conftest import MANIFEST, Rendered, render
from tests.app.certificates.test_verify import _flip_inside_a_stream
from tests.app.conftest import bearer

AUDIT_ID = uuid.uuid4().hex


@dataclass(frozen=True)
class Stored:
    """A certificate the service issued for :data:`AUDIT_ID`, in the store."""

    rendered: Rendered
    pdf: bytes
    files: dict[str, str]


def _commit(data: bytes, folder: Path, name: str) -> str:
    path = folder / name
    path.write_bytes(data)
    spooled = Spooled(path, hashlib.sha256(data).hexdigest(), len(data))
    get_store().commit(spooled)
    return spooled.sha256


@pytest.fixture(scope="module")
def offline_ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline CA that issued the service's signer (into its pki folder)."""
    request.getfixturevalue("migrated")  # the settings: the test database and data directory
    folder = tmp_path_factory.mktemp("offline") / "ca"
    init_ca(folder)
    issue_signer(folder, get_settings())
    return folder


@pytest.fixture(scope="module")
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stored:
    request.getfixturevalue("offline_ca")
    folder = tmp_path_factory.mktemp("stored")
    rendered = render(folder, Certificate(id=AUDIT_ID, audit_id=AUDIT_ID, manifest=MANIFEST))
    signer = load_service_signer(get_settings())  # the service's own CA, under its data dir
    pdf = sign_certificate(rendered.pdf, signer, approval_box=rendered.files.approval_box)
    files = {
        "report.pdf": _commit(pdf, folder, "signed.pdf"),
        "results.json": _commit(rendered.files.results_json.read_bytes(), folder, "r.json"),
    }
    return Stored(rendered, pdf, files)


def _user(db: Session, name: str) -> User:
    user = db.scalars(select(User).where(User.name == name)).one()
    return user


def _audit(
    db: Session,
    stored: Stored,
    *,
    finished: bool = True,
    audit_id: str = AUDIT_ID,
    owner: str = "alice",
    submitter: str = "alice",
) -> None:
    """A stored audit (``owner`` created it) of a model ``submitter`` uploaded."""
    creator = _user(db, owner)
    network = Network(
        owner_id=_user(db, submitter).id,
        name="t",
        sha256=uuid.uuid4().hex * 2,
        format="onnx",
        gradient_access="white-box",
        size_bytes=1,
        filename="model.onnx",
        manifest=MANIFEST,
        manifest_sha256="1" * 64,
        files=[],
        summary={},
    )
    db.add(network)
    db.flush()
    db.add(
        Audit(
            id=audit_id,
            owner_id=creator.id,
            network_id=network.id,
            protocol_name="report-test-skipping",
            protocol_version="1",
            protocol_sha256="2" * 64,
            protocol_yaml="",
            image_set="builtin",
            status="succeeded" if finished else "running",
        )
    )
    db.flush()
    if finished:
        results = json.loads(stored.rendered.files.results_json.read_text())
        db.add(
            AuditResult(
                audit_id=audit_id,
                results=results,
                results_sha256=stored.files["results.json"],
                files=stored.files,
            )
        )
    db.commit()


def _verify(client: TestClient, token: str, pdf: bytes) -> dict[str, object]:
    response = client.post(
        "/api/v1/verify", headers=bearer(token), files=[("file", ("c.pdf", pdf))]
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_verify_checks_the_signatures_and_the_database(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    stored: Stored,
    rendered: Rendered,
    tmp_path: Path,
) -> None:
    _audit(db, stored)
    report = _verify(client, tokens["bob"], stored.pdf)  # any signed-in user
    assert report["status"] == "valid", report["reason"]
    assert report["valid"] is True
    assert report["database"] == {
        "checked": True,
        "known": True,
        "certificate_id": AUDIT_ID,
        "audit_id": AUDIT_ID,
        "version": "issued",
        "stored_versions": [stored.files["report.pdf"]],
        "results_match": True,
    }
    signatures = report["signatures"]
    assert isinstance(signatures, list)
    assert [s["meaning"] for s in signatures] == ["issued"]

    # signed by another CA, for a certificate the service does not know
    other = load_service_signer(Settings(data_dir=tmp_path))
    foreign = sign_certificate(rendered.pdf, other, approval_box=rendered.files.approval_box)
    report = _verify(client, tokens["bob"], foreign)
    assert report["status"] == "unknown"
    assert report["valid"] is False
    assert report["database"] == {
        "checked": True,
        "known": False,
        "certificate_id": rendered.certificate.id,
    }

    # the stored certificate, one bit changed
    report = _verify(client, tokens["bob"], _flip_inside_a_stream(stored.pdf))
    assert report["status"] == "invalid"
    assert "signed bytes were changed" in str(report["reason"])

    # a valid signature, but not the file the service stored for this certificate
    reissued = load_service_signer(get_settings())
    again = sign_certificate(stored.rendered.pdf, reissued)
    report = _verify(client, tokens["bob"], again)
    assert report["status"] == "invalid"
    assert "not a version of certificate" in str(report["reason"])

    bad = client.post(
        "/api/v1/verify", headers=bearer(tokens["bob"]), files=[("file", ("x.pdf", b"hello"))]
    )
    assert bad.status_code == 422
    assert bad.json()["field"] == "file"
    assert client.post("/api/v1/verify", files=[("file", ("c.pdf", stored.pdf))]).status_code == 401
    verified = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "certificate.verified")
    ).all()
    assert [e.details["status"] for e in verified] == ["valid", "unknown", "invalid", "invalid"]
    assert verified[0].subject == f"audit:{AUDIT_ID}"
    assert verify_chain(db).valid


def test_verify_compares_the_signed_results_with_the_content_served(
    client: TestClient, db: Session, tokens: dict[str, str], stored: Stored
) -> None:
    """The stored results edited behind the service (their trigger dropped, their hash column
    left alone): the genuine certificate no longer matches what the service serves."""
    _audit(db, stored)  # verified valid as stored: test_verify_checks_the_signatures_...
    db.execute(text("ALTER TABLE audit_results DISABLE TRIGGER audit_results_append_only"))
    db.execute(
        text(
            "UPDATE audit_results SET results = jsonb_set(results::jsonb, '{verdicts}', "
            """'{"perturbation": "stable"}')::json WHERE audit_id = :id"""
        ),
        {"id": AUDIT_ID},
    )
    db.commit()  # as the attacker's own transaction would (a request's rollback keeps it)
    db.expire_all()
    report = _verify(client, tokens["bob"], stored.pdf)
    assert report["status"] == "invalid"
    assert report["database"]["results_match"] is False  # type: ignore[index]
    assert "not the results the service stored" in str(report["reason"])


_OPENED: list[list[str]] = []
"""While a list is in it, every file this process opens is appended to the last one."""


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _OPENED and isinstance(args[0], str | bytes):
        _OPENED[-1].append(str(args[0]))


@contextmanager
def _opens() -> Iterator[list[str]]:
    """The files this process opens inside the block (an audit hook: ``open``, ``os.open``,
    ``io.open`` all raise the ``open`` event)."""
    if not getattr(sys, "_recon_audit_records_opens", False):
        sys.addaudithook(_record_opens)
        setattr(sys, "_recon_audit_records_opens", True)  # noqa: B010 (hooks stay for good)
    _OPENED.append([])
    try:
        yield _OPENED[-1]
    finally:
        _OPENED.pop()


@pytest.mark.usefixtures("service_signer")
def test_an_auditor_approves_once_and_the_report_is_the_approved_pdf(
    client: TestClient, db: Session, tokens: dict[str, str], stored: Stored
) -> None:
    _audit(db, stored)
    url = f"/api/v1/audits/{AUDIT_ID}/approve"
    body = {"token": tokens["ada"], "comment": "Fits the intended use."}
    with _opens() as opened:  # the API process signs through the signer process
        response = client.post(url, headers=bearer(tokens["ada"]), json=body)
    assert response.status_code == 201, response.text
    key = LocalPki(get_settings().pki_dir).signer_key
    assert key.is_file()
    assert opened, "the hook records the files the approval opens"
    assert not [path for path in opened if Path(path).name == key.name], opened
    approval = response.json()
    assert approval["meaning"] == "approved"
    assert approval["approver"]["name"] == "ada"
    assert approval["comment"] == "Fits the intended use."
    assert approval["previous_pdf_sha256"] == stored.files["report.pdf"]
    assert approval["pdf_sha256"] != stored.files["report.pdf"]

    current = client.get(f"/api/v1/audits/{AUDIT_ID}/report.pdf", headers=bearer(tokens["alice"]))
    assert current.status_code == 200
    assert hashlib.sha256(current.content).hexdigest() == approval["pdf_sha256"]
    assert current.content.startswith(stored.pdf)  # an incremental update of the issued file
    issued = client.get(
        f"/api/v1/audits/{AUDIT_ID}/report.pdf?version=issued", headers=bearer(tokens["alice"])
    )
    assert issued.content == stored.pdf  # the issued certificate stays

    report = _verify(client, tokens["alice"], current.content)
    assert report["status"] == "valid", report["reason"]
    signatures = report["signatures"]
    assert isinstance(signatures, list)
    assert [(s["meaning"], s["signer"], s["ok"]) for s in signatures] == [
        ("issued", "recon-audit service", True),
        ("approved", "ada", True),
    ]
    assert isinstance(report["database"], dict)
    assert report["database"]["version"] == "approved"
    assert _verify(client, tokens["alice"], stored.pdf)["status"] == "valid"  # still valid

    again = client.post(url, headers=bearer(tokens["root"]), json={"token": tokens["root"]})
    assert again.status_code == 409
    assert "approved already" in again.json()["detail"]
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "audit.approved")).all()
    assert len(events) == 1
    assert events[0].actor == _user(db, "ada").id
    assert events[0].details["pdf_sha256"] == approval["pdf_sha256"]
    assert verify_chain(db).valid
    # approvals are append-only
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(text("UPDATE approvals SET comment = 'changed'"))


def test_approval_needs_an_auditor_the_own_token_and_a_finished_audit(
    client: TestClient, db: Session, tokens: dict[str, str], stored: Stored
) -> None:
    _audit(db, stored)
    unfinished = uuid.uuid4().hex
    _audit(db, stored, finished=False, audit_id=unfinished)
    url = f"/api/v1/audits/{AUDIT_ID}/approve"
    submitter = client.post(url, headers=bearer(tokens["alice"]), json={"token": tokens["alice"]})
    assert submitter.status_code == 403
    stolen = client.post(url, headers=bearer(tokens["ada"]), json={"token": tokens["root"]})
    assert stolen.status_code == 403
    assert stolen.json()["field"] == "token"
    missing = client.post(url, headers=bearer(tokens["ada"]), json={"comment": "ok"})
    assert missing.status_code == 422
    running = client.post(
        f"/api/v1/audits/{unfinished}/approve",
        headers=bearer(tokens["ada"]),
        json={"token": tokens["ada"]},
    )
    assert running.status_code == 409
    assert "not finished" in running.json()["detail"]
    nothing = client.post(
        f"/api/v1/audits/{uuid.uuid4().hex}/approve",
        headers=bearer(tokens["ada"]),
        json={"token": tokens["ada"]},
    )
    assert nothing.status_code == 404
    assert db.scalars(select(Approval)).all() == []


@pytest.mark.parametrize(
    ("owner", "submitter", "approver", "message"),
    [
        ("ada", "alice", "ada", "you created this audit"),
        ("root", "root", "root", "you created this audit"),
        ("ada", "root", "root", "you submitted the model of this audit"),
    ],
)
def test_nobody_approves_an_audit_they_created_or_of_a_model_they_submitted(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    stored: Stored,
    owner: str,
    submitter: str,
    approver: str,
    message: str,
) -> None:
    _audit(db, stored, owner=owner, submitter=submitter)
    response = client.post(
        f"/api/v1/audits/{AUDIT_ID}/approve",
        headers=bearer(tokens[approver]),
        json={"token": tokens[approver], "comment": "mine"},
    )
    assert response.status_code == 403, response.text
    assert message in response.json()["detail"]
    assert "separation of duties" in response.json()["detail"]
    assert db.scalars(select(Approval)).all() == []


def test_approval_without_the_signer_process_is_a_clear_503(
    client: TestClient, db: Session, tokens: dict[str, str], stored: Stored, tmp_path: Path
) -> None:
    _audit(db, stored)
    nowhere = get_settings().model_copy(update={"signer_socket": tmp_path / "none.sock"})
    client.app.dependency_overrides[get_settings] = lambda: nowhere  # type: ignore[attr-defined]
    response = client.post(
        f"/api/v1/audits/{AUDIT_ID}/approve",
        headers=bearer(tokens["ada"]),
        json={"token": tokens["ada"]},
    )
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert detail.startswith("signing is unavailable: the signer process (recon-audit signer")
    assert "is not running" in detail
    assert db.scalars(select(Approval)).all() == []


def _signer(key_pem: Path, cert_pem: Path) -> ServiceSigner:
    signer = SimpleSigner.load(str(key_pem), str(cert_pem))  # type: ignore[no-untyped-call]
    assert signer is not None
    return ServiceSigner(signer)


def _second_signer(ca: OfflineCa, folder: Path, listed: bool) -> ServiceSigner:
    """Another signing certificate from the service's CA key: listed (the CA issued it as a
    signer) or not (an attacker who holds the CA's key issued it)."""
    key, cert = issue_signer_certificate(ca.key, ca.cert)
    write_key(folder / "second.key", key)
    write_certificate(folder / "second.pem", cert)
    if listed:
        signers = ca.signers.with_signer(ca.key, ca.cert, cert)
        ca.record(signers)
        signers.write(LocalPki(get_settings().pki_dir).signer_list)
    return _signer(folder / "second.key", folder / "second.pem")


def test_verify_refuses_a_signer_its_ca_did_not_list_or_revoked(
    client: TestClient,
    db: Session,
    tokens: dict[str, str],
    stored: Stored,
    offline_ca: Path,
    tmp_path: Path,
) -> None:
    _audit(db, stored)
    genuine = _verify(client, tokens["bob"], stored.pdf)
    assert genuine["status"] == "valid", genuine["reason"]

    # the attack: the CA's key, stolen, issues a signer of its own and signs an edited copy
    forger = _second_signer(OfflineCa.open(offline_ca), tmp_path, listed=False)
    forged = sign_certificate(stored.rendered.pdf, forger)
    report = _verify(client, tokens["bob"], forged)
    assert report["status"] == "invalid"
    assert report["valid"] is False
    assert "was not issued as a signer" in str(report["reason"])
    signatures = report["signatures"]
    assert isinstance(signatures, list)
    assert signatures[0]["intact"] is True
    assert signatures[0]["trusted"] is False

    # a signer the CA listed, then revoked
    (tmp_path / "listed").mkdir()
    listed = _second_signer(OfflineCa.open(offline_ca), tmp_path / "listed", listed=True)
    second = sign_certificate(stored.rendered.pdf, listed)
    before = _verify(client, tokens["bob"], second)
    assert isinstance(before["signatures"], list)
    assert before["signatures"][0]["ok"] is True  # listed: only the database refuses it
    assert "not a version of certificate" in str(before["reason"])
    sha = fingerprint(x509.load_pem_x509_certificate((tmp_path / "listed/second.pem").read_bytes()))
    revoke_signer(offline_ca, get_settings(), sha[:12], "key lost")
    after = _verify(client, tokens["bob"], second)
    assert after["status"] == "invalid"
    assert f"its certificate (SHA-256 {sha}) was revoked on" in str(after["reason"])
    assert "(key lost)" in str(after["reason"])
    assert _verify(client, tokens["bob"], stored.pdf)["status"] == "valid"  # others stay valid
