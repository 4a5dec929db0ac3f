"""Test image sets: uploaded files are read with the science library's readers (PNG, TIFF,
NPY without pickles, DICOM, NIfTI, fastMRI HDF5 k-space) before anything is stored; ``.dcm``
files of one ``SeriesInstanceUID`` are one DICOM series (a volume, its slices ordered by
instance number or slice location); ``slices`` selects the slices of every volume in the set
(as ``recon-audit audit --slices``)."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import events
from app.errors import Conflict, Invalid, TooLarge
from app.images import repository
from app.networks.service import Upload, safe_name
from app.orm import ImageSet, User
from app.settings import Settings
from app.storage import Spooled, Store
from reconstruction.data import (
    ImageReadError,
    SliceError,
    Slices,
    dicom_series_uid,
    read_images,
)

__all__ = ["BUILTIN_SET", "file_hashes", "upload_image_set"]

#: the built-in set (phantoms and the bundled DICOMs), usable by this name
BUILTIN_SET = "builtin"


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
    if repository.visible(session, user, name) is not None:
        raise Conflict(f"you already have an image set named {name!r}")
    if slices is not None and len(slices) > 200:
        raise Invalid("slices must have at most 200 characters", field="slices")
    selection = None if slices is None else Slices(slices)
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
        records: list[dict[str, Any]] = []
        for entry in _entries(workdir, list(spooled)):
            path = workdir / entry[0] if len(entry) == 1 else _series_folder(workdir, entry)
            label = entry[0] if len(entry) == 1 else f"the series {entry[0]}, ..."
            try:
                images = read_images(path, slices=selection)
            except ImageReadError as exc:  # the upload's name, never the scratch folder's path
                problem = exc.problem.replace(f"{path}/", "").replace(f"{workdir}/", "")
                field = "slices" if isinstance(exc, SliceError) else "files"
                raise Invalid(f"{label}: {problem}", field=field) from exc
            record: dict[str, Any] = {
                "shape": list(images[0].array.shape),
                "format": images[0].metadata.get("format"),
                "images": len(images),
                "measured": images[0].kspace is not None,
            }
            if len(entry) == 1:
                only = spooled[entry[0]]
                record = {"name": entry[0], "sha256": only.sha256, "size": only.size, **record}
            else:
                members = [
                    {"name": n, "sha256": spooled[n].sha256, "size": spooled[n].size} for n in entry
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


def _entries(workdir: Path, names: list[str]) -> list[list[str]]:
    """The uploaded files as the set's entries, in upload order: ``.dcm`` files that share a
    ``SeriesInstanceUID`` are one DICOM series (read as a volume: its slices ordered by
    instance number or slice location); every other file is an entry of its own."""
    series: dict[str, list[str]] = {}
    entries: list[list[str]] = []
    for name in names:
        uid = dicom_series_uid(workdir / name) if name.lower().endswith(".dcm") else None
        if uid is None:
            entries.append([name])
        elif uid in series:
            series[uid].append(name)
        else:
            series[uid] = [name]
            entries.append(series[uid])
    return entries


def _series_folder(workdir: Path, names: list[str]) -> Path:
    """A folder holding (hard links to) a series' spooled files, to read them as one volume."""
    folder = workdir / f".series-{secrets.token_hex(4)}"
    folder.mkdir()
    for name in names:
        os.link(workdir / name, folder / name)
    return folder


def file_hashes(record: dict[str, Any]) -> list[str]:
    """The stored files of an image set's entry: its file, or a series' files."""
    return [m["sha256"] for m in record["series"]] if "series" in record else [record["sha256"]]
