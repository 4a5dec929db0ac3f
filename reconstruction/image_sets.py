"""An uploaded image set, read and summarised where untrusted data may be parsed (the service
runs :func:`summarise` only in its jail: ``python -m reconstruction.run images``).

The files of a folder become the set's entries, in the order given: ``.dcm`` files that share
a ``SeriesInstanceUID`` are one DICOM series (read as one volume, its slices ordered by
instance number or slice location), every other file is an entry of its own. Each entry is
read with :func:`reconstruction.data.read_images` (``slices`` selects the slices of every
volume) and summarised; its pixels are dropped before the next entry is read, and the set may
hold at most :data:`MAX_SET_IMAGES` images in all.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from reconstruction.data import ImageReadError, SliceError, Slices, dicom_series_uid, read_images

__all__ = ["MAX_SET_FILES", "MAX_SET_IMAGES", "Entry", "Refused", "summarise"]

#: the most files one image set may hold
MAX_SET_FILES = 4096
#: the most images (slices) one image set may hold, all its entries together
MAX_SET_IMAGES = 1024


@dataclass(frozen=True)
class Entry:
    """One entry of a set: its files (one, or a series' in upload order), the first image's
    shape and format, how many images it gave, and whether it is measured k-space."""

    files: list[str]
    shape: list[int]
    format: str | None
    images: int
    measured: bool

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Refused(ValueError):
    """The set cannot be used: ``field`` is ``files`` or ``slices``, ``message`` names the
    upload's own file (never a folder of the machine that read it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _entries(folder: Path, names: list[str]) -> list[list[str]]:
    series: dict[str, list[str]] = {}
    entries: list[list[str]] = []
    for name in names:
        uid = dicom_series_uid(folder / name) if name.lower().endswith(".dcm") else None
        if uid is None:
            entries.append([name])
        elif uid in series:
            series[uid].append(name)
        else:
            series[uid] = [name]
            entries.append(series[uid])
    return entries


def _series_folder(folder: Path, names: list[str], index: int) -> Path:
    """A folder of links to a series' files, to read them as one volume (symbolic links: the
    files may belong to another user, whose files the kernel does not let one hard-link)."""
    target = folder / f".series-{index}"
    target.mkdir()
    for name in names:
        os.symlink(f"../{name}", target / name)
    return target


def summarise(folder: Path, names: list[str], slices: str | None = None) -> list[Entry]:
    """The entries of the set made of the files ``names`` in ``folder`` (see the module);
    :class:`Refused` with the reason when a file cannot be read or the set is too large."""
    if not names:
        raise Refused("files", "upload at least one image")
    if len(names) > MAX_SET_FILES:
        raise Refused("files", f"an image set may hold at most {MAX_SET_FILES} files")
    selection = None if slices is None else Slices(slices)
    out: list[Entry] = []
    total = 0
    for index, files in enumerate(_entries(folder, names)):
        path = folder / files[0] if len(files) == 1 else _series_folder(folder, files, index)
        label = files[0] if len(files) == 1 else f"the series {files[0]}, ..."
        try:
            images = read_images(path, slices=selection)
        except ImageReadError as exc:
            problem = exc.problem.replace(f"{path}/", "").replace(f"{folder}/", "")
            field = "slices" if isinstance(exc, SliceError) else "files"
            raise Refused(field, f"{label}: {problem}") from exc
        total += len(images)
        if total > MAX_SET_IMAGES:
            raise Refused(
                "slices",
                f"{label}: the set would hold more than {MAX_SET_IMAGES} images; select fewer "
                "slices or upload fewer files",
            )
        first = images[0]
        out.append(
            Entry(
                files=files,
                shape=[int(n) for n in first.array.shape],
                format=first.metadata.get("format"),
                images=len(images),
                measured=first.kspace is not None,
            )
        )
        del images, first
    return out
