"""The ``recon-audit`` command line.

Exit codes: 0 on success, 1 when a check fails (``selfcheck``), 2 on bad input, with a message.
The science's commands live in :mod:`app.science_cli`, imported when one of them runs (or the
help lists them): the service's commands here start without torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

import reconstruction


class InputError(click.ClickException):
    """Bad input: reported as ``Error: ...`` with exit status 2."""

    exit_code = 2


#: command name -> its function in :mod:`app.science_cli`
SCIENCE_COMMANDS = {
    "audit": "audit",
    "inspect": "inspect",
    "manifest-schema": "manifest_schema",
    "selfcheck": "selfcheck",
    "simulate": "simulate",
}


class _Commands(click.Group):
    """The command group, its science commands loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SCIENCE_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SCIENCE_COMMANDS:
            from app import science_cli

            command: click.Command = getattr(science_cli, SCIENCE_COMMANDS[cmd_name])
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(reconstruction.__version__, prog_name="recon-audit")
def main() -> None:
    """Audit deep-learning image reconstruction for instabilities (Antun et al., PNAS 2020)."""


@main.command()
@click.argument("pdf", type=click.Path(path_type=Path))
def verify(pdf: Path) -> None:
    """Verify a certificate PDF offline and print a JSON report: each signature (signer,
    meaning, time, intact, trusted, coverage), changes after signing, the attachments. Trusts
    the service's CA in the trust folder (RECON_AUDIT_TRUST_DIR, default RECON_AUDIT_DATA_DIR/
    pki) for the signers on its signed list, and the operator's CA (RECON_AUDIT_SIGNING_
    PKCS12_CA); whether the service stored this file needs the service (POST /api/v1/verify).
    Exit 0 valid, 1 invalid or unknown, 2 bad input."""
    import logging

    from app.certificates.pki import trust
    from app.certificates.verify import verify_pdf
    from app.errors import AppError
    from app.settings import get_settings

    for name in ("pyhanko", "pyhanko_certvalidator"):  # the JSON says what failed
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        data = pdf.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {pdf}: {exc.strerror or exc}") from exc
    try:
        report = verify_pdf(data, trust(get_settings()))
    except AppError as exc:
        raise InputError(f"{pdf}: {exc.message}") from exc
    report.database = {
        "checked": False,
        "note": "offline: whether the service issued this file and stored these results needs "
        "the service (POST /api/v1/verify)",
    }
    click.echo(json.dumps(report.as_dict(), indent=2))
    if not report.valid:
        sys.exit(1)


@contextmanager
def _service_errors() -> Iterator[None]:
    """The service's errors (a database that cannot be reached or is not migrated, a refused
    user) as one line and exit status 2."""
    from app.errors import AppError

    try:
        yield
    except AppError as exc:
        raise InputError(exc.message) from exc


@main.command()
def migrate() -> None:
    """Create or upgrade the service's database (DATABASE_URL, else the embedded SQLite)."""
    from app.service_cli import upgrade_database

    with _service_errors():
        upgrade_database()
    click.echo("database is at the latest revision")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--worker/--no-worker",
    "with_worker",
    default=True,
    show_default=True,
    help="Also run a Celery worker beside the API (the embedded default).",
)
@click.option(
    "--signer/--no-signer",
    "with_signer",
    default=True,
    show_default=True,
    help="Also run the signer process (recon-audit signer), the one that holds the signing key.",
)
def serve(host: str, port: int, with_worker: bool, with_signer: bool) -> None:
    """Run the service: migrations first, then the signer process, the API (and a worker).
    With no configuration: SQLite and a serverless broker under RECON_AUDIT_DATA_DIR (default
    ./data)."""
    from app.service_cli import serve as run

    with _service_errors():
        run(host, port, with_worker, with_signer=with_signer)


@main.command()
@click.option("--concurrency", type=int, default=1, show_default=True)
def worker(concurrency: int) -> None:
    """Run a Celery worker for audits (BROKER_URL, else the embedded broker). The embedded
    database is migrated first; a configured one (DATABASE_URL) must be migrated already."""
    from app.service_cli import run_worker

    with _service_errors():
        code = run_worker(concurrency)
    sys.exit(code)


@main.command()
def signer() -> None:
    """Run the signer process: the only one that reads the signing key (the pki folder,
    RECON_AUDIT_SIGNING_DIR, default RECON_AUDIT_DATA_DIR/pki, created on first use; or
    RECON_AUDIT_SIGNING_PKCS12). It signs issued certificates, approvals and checkpoints for
    the API, the workers and admin checkpoint over a Unix socket (RECON_AUDIT_SIGNER_SOCKET,
    default RECON_AUDIT_DATA_DIR/signer.sock). `serve` starts one."""
    from app.service_cli import run_signer

    with _service_errors():
        run_signer()


@main.group()
def admin() -> None:
    """Administration: users and the audit log (the embedded database is migrated first)."""


@admin.command("create-user")
@click.argument("name")
@click.option("--role", type=click.Choice(["submitter", "auditor", "admin"]), required=True)
def create_user(name: str, role: str) -> None:
    """Create a user and print its API token (shown once; only its hash is stored)."""
    from app.service_cli import create_user as create

    with _service_errors():
        token = create(name, role)
    click.echo(token)


def _change_user(key: str, change: str) -> str | None:
    from app.service_cli import change_user

    token = None
    with _service_errors():
        token = change_user(key, change)
    return token


@admin.command("rotate-token")
@click.argument("user")
def rotate_token(user: str) -> None:
    """Give USER (a name or an id) a new API token and print it (shown once); the previous
    token stops working. Logged as user.token_rotated."""
    click.echo(_change_user(user, "rotate-token"))


@admin.command("revoke-token")
@click.argument("user")
def revoke_token(user: str) -> None:
    """Revoke USER's API token: it gets 401 until the token is rotated. Logged as
    user.token_revoked."""
    _change_user(user, "revoke-token")
    click.echo(f"revoked the token of {user}")


@admin.command("disable-user")
@click.argument("user")
def disable_user(user: str) -> None:
    """Disable USER: its token gets 401 until the user is enabled. Logged as user.disabled."""
    _change_user(user, "disable")
    click.echo(f"disabled {user}")


@admin.command("enable-user")
@click.argument("user")
def enable_user(user: str) -> None:
    """Enable a disabled USER again. Logged as user.enabled."""
    _change_user(user, "enable")
    click.echo(f"enabled {user}")


@admin.command("checkpoint")
def checkpoint() -> None:
    """Write a signed checkpoint of the audit log's head (its length and last hash, signed with
    the service's key) under RECON_AUDIT_CHECKPOINT_DIR (default data_dir/checkpoints); run it
    from cron. Certificates write one when they are issued, too."""
    from app.service_cli import checkpoint as write

    with _service_errors():
        head, path = write()
    click.echo(json.dumps({**head.as_dict(), "checkpoint": str(path)}))


@admin.command("ca-init")
@click.option(
    "--out",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The new CA's folder: keep it off the machines that serve requests or run audits.",
)
def ca_init(folder: Path) -> None:
    """Create an offline CA in a folder of its own (ca.pem, ca.key, and signers.json: the list
    of signers it issued, signed). Keep the folder offline; bring it only to issue-signer and
    revoke-signer."""
    from app.service_cli import ca_init as init

    with _service_errors():
        click.echo(json.dumps(init(folder)))


_CA_FOLDER = click.option(
    "--ca",
    "ca_folder",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="The offline CA's folder (admin ca-init).",
)


@admin.command("issue-signer")
@_CA_FOLDER
def issue_signer(ca_folder: Path) -> None:
    """Issue a new signing key and certificate from the offline CA into the service's pki
    folder (RECON_AUDIT_SIGNING_DIR, default RECON_AUDIT_DATA_DIR/pki), with the CA's
    certificate and its new signed list of signers; a CA the folder held before is retired
    (still trusted for what it signed). Restart the signer process afterwards."""
    from app.service_cli import issue_signer as issue

    with _service_errors():
        click.echo(json.dumps(issue(ca_folder)))


@admin.command("revoke-signer")
@_CA_FOLDER
@click.argument("sha256")
@click.option("--reason", default="revoked by the operator", show_default=True)
def revoke_signer(ca_folder: Path, sha256: str, reason: str) -> None:
    """Mark the offline CA's signer SHA256 (its certificate's fingerprint, or 8 or more of its
    first hex digits) revoked in a newly signed list: verify then refuses what it signed."""
    from app.service_cli import revoke_signer as revoke

    with _service_errors():
        click.echo(json.dumps(revoke(ca_folder, sha256, reason)))


@admin.command("verify-events")
def verify_events() -> None:
    """Check the audit log's hash chain, against the signed checkpoints and the head each
    stored certificate carries, and the finished audits' verdicts against their events; exit 1
    when any check fails."""
    from app.service_cli import verify_events as verify

    with _service_errors():
        report = verify()
    click.echo(
        json.dumps(
            {
                "events": report.events,
                "valid": report.valid,
                "problem": report.problem,
                "anchors": report.anchors,
            }
        )
    )
    if not report.valid:
        sys.exit(1)


if __name__ == "__main__":
    main()
