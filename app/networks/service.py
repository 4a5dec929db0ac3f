"""Model uploads: stream to the store's scratch area (hashing, size cap), check the format and
the manifest here (neither unpickles), validate with a real forward run in the sandbox, then
store and record in one step, or keep nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from app import events
from app.errors import Conflict, Invalid, TooLarge, UnsupportedMedia
from app.networks import repository
from app.orm import Network, User
from app.sandbox import describe_failure, run_science
from app.settings import Settings
from app.storage import Spooled, Store
from reconstruction.bounded import ExpansionError
from reconstruction.models import ManifestError, ModelError, detect_format, load_manifest

__all__ = ["Upload", "safe_name", "upload_network"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
Upload = tuple[str, BinaryIO]


def safe_name(name: str | None, field: str) -> str:
    """A plain file name (the manifest refers to files by these names)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not _NAME.match(base) or base in (".", ".."):
        raise Invalid(f"file name {name!r} is not a plain file name", field=field)
    return base


def _field_of(message: str) -> str | None:
    """The manifest field a CLI error names (a plain dotted name, never the model's text)."""
    match = re.search(r"^Error: .*manifest field '([A-Za-z0-9_.]{1,64})'", message, re.M)
    return match.group(1) if match else None


def _summary(stdout: str) -> dict[str, Any]:
    """The validation summary, which is all the jailed run may print on stdout (a network that
    prints, e.g. TorchScript's ``print``, is refused rather than parsed around)."""
    try:
        summary = json.loads(stdout)
    except ValueError:
        summary = None
    if not isinstance(summary, dict) or "gradient_access" not in summary:
        raise Invalid(
            "the model failed validation: it wrote to standard output while it ran; "
            "remove print statements from the network",
            field="model",
        )
    return summary


def _same_upload(
    existing: Network, spooled: dict[str, Spooled], model_name: str, manifest_name: str
) -> Network:
    """A model's identity is its bytes with its manifest (whatever its file is called) and
    referenced files: the same upload again returns the existing record; the same bytes with
    another manifest (or other files) are refused (409), never answered with the old record."""
    referenced = {(n, s.sha256) for n, s in spooled.items() if n not in (model_name, manifest_name)}
    stored = {(e["name"], e["sha256"]) for e in existing.files if e["role"] == "referenced"}
    if spooled[manifest_name].sha256 == existing.manifest_sha256 and referenced == stored:
        return existing
    raise Conflict(
        f"you uploaded these model bytes already as model {existing.id}, with another manifest "
        "or other referenced files; a model is its bytes with its manifest: audit model "
        f"{existing.id} as it is, or upload a changed model file",
        field="manifest",
    )


def upload_network(
    session: Session,
    store: Store,
    settings: Settings,
    user: User,
    model: Upload,
    manifest: Upload,
    files: list[Upload],
) -> tuple[Network, bool]:
    """Validate and store an upload; returns ``(network, created)``. The same model bytes,
    manifest and files from the same owner return the existing record; the same bytes with
    another manifest get 409."""
    workdir = store.workdir("upload-")
    try:
        budget = settings.max_upload_bytes
        spooled: dict[str, Spooled] = {}
        entries = [(model, "model"), (manifest, "manifest")] + [(f, "files") for f in files]
        for (name, stream), field in entries:
            plain = safe_name(name, field)
            if plain in spooled:
                raise Invalid(f"two uploaded files are named {plain!r}", field=field)
            try:
                spooled[plain] = store.spool(stream, workdir, plain, limit=budget)
            except TooLarge as exc:
                limit = settings.max_upload_bytes
                raise TooLarge(f"the upload exceeds the limit of {limit} bytes") from exc
            budget -= spooled[plain].size
        model_name = safe_name(model[0], "model")
        manifest_name = safe_name(manifest[0], "manifest")
        try:
            fmt = detect_format(workdir / model_name)
        except ExpansionError as exc:
            raise TooLarge(str(exc), field="model") from exc
        except ModelError as exc:
            raise UnsupportedMedia(str(exc), field="model") from exc
        try:
            parsed = load_manifest(workdir / manifest_name)
        except ManifestError as exc:
            field = f"manifest.{exc.field}" if exc.field else "manifest"
            raise Invalid(str(exc), field=field) from exc
        existing = repository.by_owner_and_hash(session, user.id, spooled[model_name].sha256)
        if existing is not None:
            return _same_upload(existing, spooled, model_name, manifest_name), False
        result = run_science(
            ["inspect", model_name, "--manifest", manifest_name, "--device", "cpu"],
            workdir=workdir,
            timeout=settings.inspect_timeout,
            limits=settings.sandbox_limits(cpu_seconds=settings.inspect_timeout),
            bwrap=settings.sandbox_bwrap,
        )
        if result.returncode != 0:
            named = _field_of(result.stderr)
            raise Invalid(
                describe_failure(result, "the model failed validation"),
                field=f"manifest.{named}" if named else "model",
            )
        summary = _summary(result.stdout)
        extra = [
            {"name": n, "sha256": s.sha256, "size": s.size, "role": "manifest"}
            for n, s in spooled.items()
            if n == manifest_name
        ] + [
            {"name": n, "sha256": s.sha256, "size": s.size, "role": "referenced"}
            for n, s in spooled.items()
            if n not in (model_name, manifest_name)
        ]
        network = Network(
            owner_id=user.id,
            name=parsed.name,
            sha256=spooled[model_name].sha256,
            format=fmt,
            gradient_access=summary["gradient_access"],
            size_bytes=spooled[model_name].size,
            filename=model_name,
            manifest=json.loads(parsed.model_dump_json()),
            manifest_sha256=spooled[manifest_name].sha256,
            files=extra,
            summary=summary,
        )
        session.add(network)
        session.flush()
        events.record(
            session,
            user.id,
            "model.uploaded",
            f"model:{network.id}",
            {"sha256": network.sha256, "format": fmt, "files": [e["name"] for e in extra]},
        )
        store.commit_with(spooled.values(), session)
        return network, True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def materialise(store: Store, network: Network, folder: Path) -> tuple[Path, Path]:
    """Copy a stored model, its manifest and its files into ``folder`` under their upload
    names, each re-verified against its hash; returns ``(model, manifest)`` paths."""
    model = folder / network.filename
    store.copy_out(network.sha256, model)
    manifest = folder / "manifest.json"
    for entry in network.files:
        target = folder / safe_name(entry["name"], "files")
        store.copy_out(entry["sha256"], target)
        if entry["role"] == "manifest":
            manifest = target
    return model, manifest
