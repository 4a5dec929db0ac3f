"""The audit log against its anchors outside the database, through the operator's commands on
the embedded SQLite: ``admin checkpoint`` writes a signed head, ``admin verify-events`` passes
an untouched log, and catches an edited event, a chain recomputed after an edit, and the last
events deleted (each done as an attacker with write access to the database would: the
append-only triggers dropped first); a forged checkpoint is refused too, and so is one signed
with a certificate its CA did not list as a signer, or revoked. The checkpoints are signed by
the signer process (``recon-audit signer``); without it, ``admin checkpoint`` is refused."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.certificates.authority import OfflineCa
from app.certificates.pki import fingerprint, issue_signer_certificate
from app.checkpoints import signed_body
from app.events import GENESIS, _digest
from app.orm import AuditEvent
from tests.app.conftest import running_signer
from tests.app.test_first_run import _invoke


@pytest.fixture
def unsigned_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECON_AUDIT_DATA_DIR", str(tmp_path / "data"))
    for key in ("DATABASE_URL", "RECON_AUDIT_DATABASE_URL", "BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "data"


@pytest.fixture
def data_dir(unsigned_data_dir: Path) -> Iterator[Path]:
    """The embedded data directory, with its signer process running."""
    unsigned_data_dir.mkdir(parents=True)
    with running_signer(unsigned_data_dir / "signer.log"):
        yield unsigned_data_dir


def _verify() -> tuple[int, dict[str, object]]:
    result = _invoke("admin", "verify-events")
    report: dict[str, object] = json.loads(result.output.strip().splitlines()[-1])
    return result.exit_code, report


def _untriggered(data_dir: Path) -> sqlite3.Connection:
    """The database as an attacker with write access sees it: the log's triggers dropped."""
    connection = sqlite3.connect(data_dir / "recon-audit.db")
    for verb in ("update", "delete"):
        connection.execute(f"DROP TRIGGER audit_events_no_{verb}")
    return connection


def _edit(connection: sqlite3.Connection) -> None:
    connection.execute("""UPDATE audit_events SET details = '{"name": "mallory", "role": "admin"}'
                          WHERE id = 2""")


def _recompute(connection: sqlite3.Connection) -> None:
    """Edit event 2, then rewrite every hash from it on, so the chain is consistent again."""
    _edit(connection)
    rows = connection.execute(
        "SELECT id, at, actor, action, subject, details FROM audit_events ORDER BY id"
    ).fetchall()
    previous = GENESIS
    for id_, at, actor, action, subject, details in rows:
        event = AuditEvent(
            at=datetime.fromisoformat(at), actor=actor, action=action, subject=subject,
            details=json.loads(details), prev_hash=previous,
        )  # fmt: skip
        digest = _digest(event)
        connection.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE id = ?", (previous, digest, id_)
        )
        previous = digest


def _truncate(connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)")


def _log(data_dir: Path) -> None:
    for name in ("alice", "bob", "carol"):
        assert _invoke("admin", "create-user", name, "--role", "submitter").exit_code == 0
    written = _invoke("admin", "checkpoint")
    assert written.exit_code == 0, written.output
    head = json.loads(written.output)
    assert head["events"] == 3
    assert Path(head["checkpoint"]).parent == data_dir / "checkpoints"


def test_an_untouched_log_passes_against_its_signed_checkpoint(data_dir: Path) -> None:
    _log(data_dir)
    code, report = _verify()
    assert code == 0, report
    assert report == {"events": 3, "valid": True, "problem": None, "anchors": 1}
    (checkpoint,) = (data_dir / "checkpoints").glob("*.json")
    document = json.loads(checkpoint.read_text())
    assert document["schema"] == "recon-audit/checkpoint/v1"
    assert document["events"] == 3
    assert len(document["head"]) == 64
    assert "BEGIN CERTIFICATE" in document["certificate"]
    assert document["signature"]
    # events after the checkpoint are fine: the log grows
    assert _invoke("admin", "create-user", "dave", "--role", "auditor").exit_code == 0
    assert _verify() == (0, {"events": 4, "valid": True, "problem": None, "anchors": 1})


@pytest.mark.parametrize(
    ("tamper", "caught"),
    [
        (_edit, "event 2: content does not match its hash"),
        (_recompute, "is not the head checkpoint"),
        (_truncate, "the chain has 2 events but checkpoint"),
    ],
    ids=["edit", "recompute", "truncate"],
)
def test_verify_events_catches_each_tamper(
    data_dir: Path, tamper: Callable[[sqlite3.Connection], None], caught: str
) -> None:
    _log(data_dir)
    with _untriggered(data_dir) as connection:
        tamper(connection)
    code, report = _verify()
    assert code == 1, report
    assert report["valid"] is False
    assert caught in str(report["problem"])


def test_the_log_refuses_changes_while_its_triggers_stand(data_dir: Path) -> None:
    _log(data_dir)
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)
    assert _verify()[0] == 0


def test_a_forged_checkpoint_is_refused(data_dir: Path) -> None:
    _log(data_dir)
    (checkpoint,) = (data_dir / "checkpoints").glob("*.json")
    document = json.loads(checkpoint.read_text())
    document["events"] = 2  # an attacker who truncated the log would need this
    checkpoint.write_text(json.dumps(document))
    code, report = _verify()
    assert code == 1
    assert "its signature does not verify" in str(report["problem"])


def test_a_finished_audit_refuses_changes_on_sqlite(data_dir: Path) -> None:
    assert _invoke("migrate").exit_code == 0
    with sqlite3.connect(data_dir / "recon-audit.db") as connection:
        connection.execute(
            "INSERT INTO users (id, name, role, token_hash, created_at) "
            "VALUES ('u', 'sam', 'submitter', 'h', '2026-12-01 00:00:00')"
        )
        connection.execute(
            "INSERT INTO networks (id, owner_id, name, sha256, format, gradient_access, "
            "size_bytes, filename, manifest, manifest_sha256, files, summary, created_at) "
            "VALUES ('n', 'u', 'n', 's', 'onnx', 'white-box', 1, 'm.onnx', '{}', 'm', '[]', "
            "'{}', '2026-12-01 00:00:00')"
        )
        for id_, status in (("running", "running"), ("done", "succeeded")):
            connection.execute(
                "INSERT INTO audits (id, owner_id, network_id, protocol_name, protocol_version, "
                "protocol_sha256, protocol_yaml, image_set, status, percent, attempts, "
                "created_at, verdicts) VALUES (?, 'u', 'n', 'quick', '2', 'p', '', 'builtin', ?, "
                """0, 0, '2026-12-01 00:00:00', '{"perturbation": "unstable"}')""",
                (id_, status),
            )
        connection.execute("UPDATE audits SET percent = 50 WHERE id = 'running'")
        for statement in (
            """UPDATE audits SET verdicts = '{"perturbation": "stable"}' WHERE id = 'done'""",
            "DELETE FROM audits WHERE id = 'done'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="a finished audit is immutable"):
                connection.execute(statement)


def test_checkpoint_without_the_signer_process_is_refused_in_one_line(
    unsigned_data_dir: Path,
) -> None:
    assert _invoke("admin", "create-user", "alice", "--role", "submitter").exit_code == 0
    result = _invoke("admin", "checkpoint")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: signing is unavailable: the signer process")
    assert "is not running" in line
    assert not (unsigned_data_dir / "checkpoints").exists()


@pytest.fixture
def offline_data_dir(unsigned_data_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data directory whose signer an offline CA issued (admin ca-init, admin issue-signer),
    its signer process running; and the CA's folder."""
    ca = tmp_path / "offline-ca"
    assert _invoke("admin", "ca-init", "--out", str(ca)).exit_code == 0
    issued = _invoke("admin", "issue-signer", "--ca", str(ca))
    assert issued.exit_code == 0, issued.output
    with running_signer(tmp_path / "signer.log"):
        yield unsigned_data_dir, ca


def _forge(checkpoint: Path, ca_folder: Path) -> None:
    """Re-sign ``checkpoint`` with a signer of the CA's own key that the CA never listed (an
    attacker who stole that key), claiming fewer events."""
    ca = OfflineCa.open(ca_folder)
    key, cert = issue_signer_certificate(ca.key, ca.cert)
    document = json.loads(checkpoint.read_text())
    document["events"] = 2
    signature = key.sign(signed_body(document), ec.ECDSA(hashes.SHA256()))
    document["signature"] = base64.b64encode(signature).decode()
    document["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode()
    checkpoint.write_text(json.dumps(document))


def test_a_checkpoint_from_a_signer_the_ca_did_not_list_or_revoked_is_refused(
    offline_data_dir: tuple[Path, Path],
) -> None:
    data_dir, ca = offline_data_dir
    _log(data_dir)
    assert _verify()[0] == 0
    (checkpoint,) = (data_dir / "checkpoints").glob("*.json")
    genuine = checkpoint.read_text()
    _forge(checkpoint, ca)
    code, report = _verify()
    assert code == 1
    assert "signed by a certificate the service does not trust" in str(report["problem"])
    assert "was not issued as a signer" in str(report["problem"])

    checkpoint.write_text(genuine)
    assert _verify()[0] == 0
    signer = (data_dir / "pki" / "signer.pem").read_bytes()
    sha = fingerprint(x509.load_pem_x509_certificate(signer))
    revoked = _invoke("admin", "revoke-signer", "--ca", str(ca), sha, "--reason", "key lost")
    assert revoked.exit_code == 0, revoked.output
    code, report = _verify()
    assert code == 1
    assert "was revoked on" in str(report["problem"])
