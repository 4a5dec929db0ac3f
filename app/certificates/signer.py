"""The signer process: the only process of the service that reads the signing key.

``recon-audit signer`` (:func:`run`; ``recon-audit serve`` starts one as its child) loads the
key once (:func:`app.certificates.pki.load_service_signer`: the pki folder, created or migrated
when needed, or the configured PKCS#12), copies the public trust files to the trust folder
(:func:`app.certificates.pki.publish_trust`), and answers on a Unix socket
(:attr:`~app.settings.Settings.signer_address`, mode 0660) with the key in its memory only.

The API, the workers and ``recon-audit admin checkpoint`` ask it (:func:`sign_issued`,
:func:`sign_approval`, :func:`sign_checkpoint`); it signs three kinds of things and nothing
else:

* ``issue`` -- a rendered certificate: the service's certification signature
  (:func:`app.certificates.signing.sign_certificate`);
* ``approve`` -- an auditor's approval signature (approver, comment and time printed) added to
  an issued certificate (:func:`app.certificates.signing.approve_certificate`);
* ``checkpoint`` -- the canonical JSON body of an audit-log checkpoint (its schema checked, so
  the raw signature cannot stand for anything else).

Each request is logged with the asking process's pid and uid (``SO_PEERCRED``) and the SHA-256
of what was signed. A request is one frame each way: a 4-byte big-endian length and a JSON
object (bytes in base64). Where no signer answers, a request fails at once with
:class:`SignerUnavailable` (503); one that gets no answer within ``signer_timeout`` seconds
fails with it too.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from app.certificates import CHECKPOINT_SCHEMA, SignatureBox
from app.errors import AppError, Conflict, Invalid, Unavailable
from app.settings import Settings

__all__ = [
    "SignerUnavailable",
    "identity",
    "run",
    "sign_approval",
    "sign_checkpoint",
    "sign_issued",
]

log = logging.getLogger(__name__)

#: the largest frame either side accepts (a certificate PDF with its figures is a few MiB)
MAX_FRAME = 256 * 2**20
#: seconds to wait for the socket to accept a connection
CONNECT_TIMEOUT = 5.0
#: the longest socket path ``bind``/``connect`` take (``sun_path``); longer ones are reached
#: through the folder's descriptor
SUN_PATH = 107


class SignerUnavailable(Unavailable):
    """No signer process answers (not started, stopped, or too slow)."""


class SignerError(AppError):
    """The signer refused or failed a request (its status and message)."""


_ERRORS: dict[int, type[AppError]] = {409: Conflict, 422: Invalid}


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A name ``bind`` and ``connect`` accept for ``path``: itself, or for a path longer than
    ``sun_path`` the same file through its folder's descriptor (``/proc/self/fd/N/name``)."""
    if len(os.fsencode(path)) <= SUN_PATH:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    connection.sendall(struct.pack(">I", len(data)) + data)


def _exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 2**20))
        if not chunk:
            raise ConnectionError("the connection closed inside a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(connection: socket.socket) -> dict[str, Any]:
    (size,) = struct.unpack(">I", _exactly(connection, 4))
    if size > MAX_FRAME:
        raise ValueError(f"a message of {size} bytes is over the limit ({MAX_FRAME})")
    message = json.loads(_exactly(connection, size))
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(value: Any) -> bytes:
    return base64.b64decode(str(value), validate=True)


# --- the client ---------------------------------------------------------------------------


def _ask(settings: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the signer process and its answer; :class:`SignerUnavailable` where none
    answers, the signer's own error (:class:`SignerError`, or its 409/422) where it refused."""
    path = settings.signer_address
    where = f"the signer process (recon-audit signer, socket {path})"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(CONNECT_TIMEOUT)
        try:
            with _reachable(path) as name:
                connection.connect(name)
        except OSError as exc:
            raise SignerUnavailable(
                f"signing is unavailable: {where} is not running ({exc.strerror or exc}); "
                "`recon-audit serve` starts it"
            ) from exc
        connection.settimeout(settings.signer_timeout)
        try:
            _send(connection, request)
            answer = _receive(connection)
        except TimeoutError as exc:
            raise SignerUnavailable(
                f"signing is unavailable: {where} did not answer within {settings.signer_timeout} s"
            ) from exc
        except (OSError, ValueError) as exc:
            raise SignerUnavailable(f"signing is unavailable: {where} failed: {exc}") from exc
    if "error" in answer:
        status = int(answer.get("status", 500))
        error = _ERRORS.get(status, SignerError)(str(answer["error"]))
        error.status_code = status
        raise error
    return answer


def identity(settings: Settings) -> dict[str, str]:
    """The signer's certificate (PEM) and where its key came from; doubles as a liveness
    check."""
    answer = _ask(settings, {"op": "identity"})
    return {"certificate": str(answer["certificate"]), "source": str(answer["source"])}


def sign_issued(
    settings: Settings, pdf: bytes, approval_box: SignatureBox | None
) -> tuple[bytes, str, str]:
    """The service's certification signature on a rendered certificate: the signed file, the
    signing certificate's subject and where the key came from."""
    box = None if approval_box is None else [approval_box.page, *approval_box.rect]
    answer = _ask(settings, {"op": "issue", "pdf": _b64(pdf), "approval_box": box})
    return _bytes(answer["pdf"]), str(answer["signer"]), str(answer["source"])


def sign_approval(
    settings: Settings, pdf: bytes, *, approver: str, comment: str, at: datetime
) -> bytes:
    """An auditor's approval signature added to an issued certificate (409 where it carries
    one already)."""
    answer = _ask(
        settings,
        {
            "op": "approve",
            "pdf": _b64(pdf),
            "approver": approver,
            "comment": comment,
            "at": at.isoformat(),
        },
    )
    return _bytes(answer["pdf"])


def sign_checkpoint(settings: Settings, body: bytes) -> tuple[bytes, str]:
    """The signature on a checkpoint's canonical body and the signing certificate (PEM)."""
    answer = _ask(settings, {"op": "checkpoint", "body": _b64(body)})
    return _bytes(answer["signature"]), str(answer["certificate"])


# --- the process --------------------------------------------------------------------------


class _Keys:
    """The signing key in memory, and the requests it signs (one at a time)."""

    def __init__(self, settings: Settings) -> None:
        from app.certificates.pki import load_service_signer

        self.service = load_service_signer(settings)
        cert = self.service.signer.signing_cert
        key = getattr(self.service.signer, "signing_key", None)
        if cert is None or key is None:
            raise AppError("the signing key has no certificate")
        self.pem = _pem(cert.dump())
        self.subject = str(cert.subject.human_friendly)
        self.raw_key = serialization.load_der_private_key(key.dump(), password=None)
        self.lock = threading.Lock()

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The answer to ``request`` and what to log about it."""
        op = request.get("op")
        handlers: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], str]]] = {
            "identity": self._identity,
            "issue": self._issue,
            "approve": self._approve,
            "checkpoint": self._checkpoint,
        }
        if op not in handlers:
            raise Invalid(f"unknown request {op!r}")
        with self.lock:
            return handlers[str(op)](request)

    def _identity(self, _request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return {"certificate": self.pem, "source": self.service.source}, "identity"

    def _issue(self, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        from app.certificates.signing import sign_certificate

        box = request.get("approval_box")
        approval_box = None
        if box is not None:
            page, x1, y1, x2, y2 = (int(v) for v in box)
            approval_box = SignatureBox(page, (x1, y1, x2, y2))
        signed = sign_certificate(_bytes(request["pdf"]), self.service, approval_box=approval_box)
        answer = {"pdf": _b64(signed), "signer": self.subject, "source": self.service.source}
        return answer, f"issued {hashlib.sha256(signed).hexdigest()}"

    def _approve(self, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        from app.certificates.signing import approve_certificate

        signed = approve_certificate(
            _bytes(request["pdf"]),
            self.service,
            approver=str(request["approver"]),
            comment=str(request.get("comment", "")),
            at=datetime.fromisoformat(str(request["at"])),
        )
        digest = hashlib.sha256(signed).hexdigest()
        return {"pdf": _b64(signed)}, f"approval by {request['approver']!r} {digest}"

    def _checkpoint(self, request: dict[str, Any]) -> tuple[dict[str, Any], str]:
        body = _bytes(request["body"])
        document = json.loads(body)
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        if not isinstance(document, dict) or document.get("schema") != CHECKPOINT_SCHEMA:
            raise Invalid(f"a checkpoint body must be a {CHECKPOINT_SCHEMA} document")
        if canonical != body:
            raise Invalid("a checkpoint body must be canonical JSON")
        key = self.raw_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignerError(f"the signing key ({type(key).__name__}) cannot sign checkpoints")
        answer = {"signature": _b64(signature), "certificate": self.pem}
        return answer, f"checkpoint {hashlib.sha256(body).hexdigest()}"


def _pem(der: bytes) -> str:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _peer(connection: socket.socket) -> str:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, uid, _gid = struct.unpack("3i", credentials)
    return f"pid {pid} uid {uid}"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    keys: _Keys
    timeout_s: float


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(self.server.timeout_s)
        peer = _peer(connection)
        try:
            request = _receive(connection)
        except (OSError, ValueError) as exc:
            log.warning("signer: a bad request from %s: %s", peer, exc)
            return
        try:
            answer, what = self.server.keys.handle(request)
            log.info("signer: %s for %s", what, peer)
        except AppError as exc:
            answer = {"error": exc.message, "status": exc.status_code}
            log.warning("signer: refused %r from %s: %s", request.get("op"), peer, exc.message)
        except (KeyError, TypeError, ValueError) as exc:
            answer = {"error": f"a malformed request: {exc}", "status": 422}
            log.warning("signer: a malformed %r from %s: %s", request.get("op"), peer, exc)
        with contextlib.suppress(OSError):
            _send(connection, answer)


class _Stopped(Exception):
    pass


def _stop(_signum: int, _frame: object) -> None:
    raise _Stopped


def _claim(path: Path) -> None:
    """Make room for the socket: refuse where a signer answers there already, remove a stale
    one left by a signer that died."""
    if not path.exists() and not path.is_symlink():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, _reachable(path) as name:
        probe.settimeout(CONNECT_TIMEOUT)
        try:
            probe.connect(name)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise AppError(f"a signer process already listens on {path}")
    path.unlink(missing_ok=True)


def run(settings: Settings) -> None:
    """The signer process (see the module), until SIGTERM or SIGINT."""
    from app.certificates.pki import publish_trust

    keys = _Keys(settings)
    publish_trust(settings)
    path = settings.signer_address
    path.parent.mkdir(parents=True, exist_ok=True)
    _claim(path)
    previous = os.umask(0o117)  # the socket: 0660, the service's user and group
    try:
        with _reachable(path) as name:
            server = _Server(name, _Handler, bind_and_activate=True)
    finally:
        os.umask(previous)
    server.keys, server.timeout_s = keys, float(settings.signer_timeout)
    inode = path.stat().st_ino
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    log.warning("signer: listening on %s, signing with %s", path, keys.service.source)
    try:
        server.serve_forever(poll_interval=0.5)
    except _Stopped:
        log.warning("signer: stopped")
    finally:
        server.server_close()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:  # still ours
                path.unlink()
