"""Test image sets: uploaded files are read with the science library's readers (PNG, TIFF,
NPY without pickles, DICOM, NIfTI, fastMRI HDF5 k-space) before anything is stored; ``slices``
selects the slices of every volume in the set (as ``recon-audit audit --slices``)."""

from __future__ import annotations

import shutil

from sqlalchemy.orm import Session

from app import events
from app.errors import Conflict, Invalid, TooLarge
from app.images import repository
from app.networks.service import Upload, safe_name
from app.orm import ImageSet, User
from app.settings import Settings
from app.storage import Spooled, Store
from reconstruction.data import ImageReadError, SliceError, Slices, read_images

__all__ = ["BUILTIN_SET", "upload_image_set"]

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
        records = []
        for file_name, stream in files:
            plain = safe_name(file_name, "files")
            if plain in spooled:
                raise Invalid(f"two images are named {plain!r}", field="files")
            spooled[plain] = store.spool(stream, workdir, plain, limit=settings.max_image_bytes)
            budget -= spooled[plain].size
            if budget < 0:
                raise TooLarge("the image upload is too large")
            try:
                images = read_images(workdir / plain, slices=selection)
            except ImageReadError as exc:  # the upload's name, never the scratch folder's path
                problem = exc.problem.replace(f"{workdir}/", "")
                field = "slices" if isinstance(exc, SliceError) else "files"
                raise Invalid(f"{plain}: {problem}", field=field) from exc
            record = {
                "name": plain,
                "sha256": spooled[plain].sha256,
                "size": spooled[plain].size,
                "shape": list(images[0].array.shape),
                "format": images[0].metadata.get("format"),
                "images": len(images),
                "measured": images[0].kspace is not None,
            }
            records.append(record if slices is None else {**record, "slices": slices})
        image_set = ImageSet(owner_id=user.id, name=name, images=records)
        session.add(image_set)
        session.flush()
        events.record(
            session,
            user.id,
            "images.uploaded",
            f"images:{image_set.id}",
            {"name": name, "sha256": [r["sha256"] for r in records]},
        )
        store.commit_with(spooled.values(), session)
        return image_set
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
