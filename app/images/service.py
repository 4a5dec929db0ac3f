"""Test image sets: the uploaded files are streamed to the store's scratch area (hashed, size
capped) and read only in the jail (``python -m reconstruction.run images``:
:func:`reconstruction.image_sets.summarise`), which says what each entry holds; nothing is
stored unless every file reads. The API process parses no uploaded byte (no HDF5, DICOM, NIfTI,
image or NPY library runs in it): what comes back from the jail is a bounded summary, checked
here against the upload before it is believed. ``.dcm`` files of one ``SeriesInstanceUID`` are
one DICOM series; ``slices`` selects the slices of every volume in the set (as ``recon-audit
audit --slices``). Each user's uploads are checked one at a time, and a few at once on the host
(:mod:`app.inspections`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from app import events
from app.errors import Conflict, Invalid, TooLarge
from app.images import repository
from app.inspections import inspection_slot
from app.networks.service import Upload, safe_name
from app.orm import ImageSet, User
from app.sandbox import SandboxResult, describe_failure, run_science
from app.settings import Settings
from app.storage import Spooled, Store

__all__ = ["BUILTIN_SET", "MAX_FILES", "file_hashes", "upload_image_set"]

#: the built-in set (phantoms and the bundled DICOMs), usable by this name
BUILTIN_SET = "builtin"
#: the most files one image set upload may carry (``reconstruction.image_sets.MAX_SET_FILES``)
MAX_FILES = 4096
#: the longest message of the jail's that is passed on
MESSAGE_CHARS = 500


class _Entry(BaseModel):
    """One entry of the jail's summary, as the API accepts it (anything else is refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    files: list[str] = Field(min_length=1, max_length=MAX_FILES)
    shape: list[int] = Field(min_length=2, max_length=2)
    format: str | None = Field(max_length=40)
    images: int = Field(ge=1)
    measured: bool


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    entries: list[_Entry] = Field(min_length=1, max_length=MAX_FILES)


class _Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    field: Literal["files", "slices"]
    message: str


def upload_image_set(
    session: Session,
    store: Store,
    settings: Settings,
    user: User,
    name: str,
    files: list[Upload],
    slices: str | None = None,
) -> ImageSet:
    if not name or len(name) > 100 or name == BUILTIN_SET:
        raise Invalid("name must have 1 to 100 characters and not be 'builtin'", field="name")
    if not files:
        raise Invalid("upload at least one image", field="files")
    if len(files) > MAX_FILES:
        raise Invalid(f"an image set may hold at most {MAX_FILES} files", field="files")
    if repository.visible(session, user, name) is not None:
        raise Conflict(f"you already have an image set named {name!r}")
    if slices is not None and (len(slices) > 200 or not slices.isprintable()):
        raise Invalid("slices must be at most 200 printable characters", field="slices")
    workdir = store.workdir("images-")
    try:
        budget = settings.max_image_bytes * len(files)
        spooled: dict[str, Spooled] = {}
        for file_name, stream in files:
            plain = safe_name(file_name, "files")
            if plain in spooled:
                raise Invalid(f"two images are named {plain!r}", field="files")
            spooled[plain] = store.spool(stream, workdir, plain, limit=settings.max_image_bytes)
            budget -= spooled[plain].size
            if budget < 0:
                raise TooLarge("the image upload is too large")
        with inspection_slot(settings, user.id):
            entries = _read_in_jail(settings, workdir, list(spooled), slices)
        records: list[dict[str, Any]] = []
        for entry in entries:
            record: dict[str, Any] = {
                "shape": entry.shape,
                "format": entry.format,
                "images": entry.images,
                "measured": entry.measured,
            }
            if len(entry.files) == 1:
                only = spooled[entry.files[0]]
                record = {
                    "name": entry.files[0],
                    "sha256": only.sha256,
                    "size": only.size,
                    **record,
                }
            else:
                members = [
                    {"name": n, "sha256": spooled[n].sha256, "size": spooled[n].size}
                    for n in entry.files
                ]
                record = {"name": f"series-{len(records) + 1}", "series": members, **record}
            records.append(record if slices is None else {**record, "slices": slices})
        image_set = ImageSet(owner_id=user.id, name=name, images=records)
        session.add(image_set)
        session.flush()
        events.record(
            session,
            user.id,
            "images.uploaded",
            f"images:{image_set.id}",
            {"name": name, "sha256": [sha for r in records for sha in file_hashes(r)]},
        )
        store.commit_with(spooled.values(), session)
        return image_set
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_in_jail(
    settings: Settings, workdir: Path, names: list[str], slices: str | None
) -> list[_Entry]:
    """The set's entries as the jail read them; :class:`Invalid` when it refused a file (its
    own words: it saw only the upload) or failed (the service's words)."""
    args = ["images", *names] + ([] if slices is None else ["--slices", slices])
    result = run_science(
        args,
        workdir=workdir,
        timeout=settings.inspect_timeout,
        limits=settings.sandbox_limits(cpu_seconds=settings.inspect_timeout),
        bwrap=settings.sandbox_bwrap,
    )
    if result.returncode == 2:
        refusal = _refusal(result)
        if refusal is not None:
            raise Invalid(refusal.message, field=refusal.field)
    if result.returncode != 0:
        raise Invalid(describe_failure(result, "the images could not be read"), field="files")
    try:
        summary = _Summary.model_validate(json.loads(result.stdout))
    except (ValueError, ValidationError) as exc:
        raise Invalid("the images could not be read: the check's answer was malformed") from exc
    listed = [n for entry in summary.entries for n in entry.files]
    if sorted(listed) != sorted(names):
        raise Invalid("the images could not be read: the check's answer does not fit the upload")
    return summary.entries


def _refusal(result: SandboxResult) -> _Refusal | None:
    """The jail's refusal (``{"refused": {"field", "message"}}`` on stdout), its message cut to
    :data:`MESSAGE_CHARS` and cleared of the jail's folder."""
    try:
        refusal = _Refusal.model_validate(json.loads(result.stdout)["refused"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return None
    message = refusal.message.replace("/job/", "").replace("/job", "")
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS].rsplit(" ", 1)[0] + " ..."
    return _Refusal(field=refusal.field, message=message)


def file_hashes(record: dict[str, Any]) -> list[str]:
    """The stored files of an image set's entry: its file, or a series' files."""
    return [m["sha256"] for m in record["series"]] if "series" in record else [record["sha256"]]
