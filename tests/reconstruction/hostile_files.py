"""Hostile test-image files, built in the test that uses them (no download): HDF5 files whose
``kspace`` reads other files (external storage, virtual datasets, external and soft links),
non-standard float types, unknown or non-allowed filters, chunk and slice-count bombs, empty
shapes; volumes of many tiny slices (NIfTI-2, TIFF, DICOM); PNG and TIFF decompression bombs.

Each builder writes ``path`` and returns it; the readers of :mod:`reconstruction.data` and
:mod:`reconstruction.measured` must refuse every one of them before reading any data.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np

__all__ = [
    "build_chunk_bomb",
    "build_custom_float",
    "build_dicom_frames",
    "build_empty_kspace",
    "build_external_kspace",
    "build_filtered_kspace",
    "build_linked_kspace",
    "build_many_slices",
    "build_nifti_slices",
    "build_png_bomb",
    "build_tiff_bomb",
    "build_tiff_pages",
    "build_virtual_kspace",
]


def _nonstandard_float() -> h5py.h5t.TypeFloatID:
    """A 64-bit float whose exponent bias is not IEEE's: values that read as NaN or finite
    depending on one byte (the attack's one-bit oracle)."""
    float_type = h5py.h5t.IEEE_F64LE.copy()
    float_type.set_ebias(1)
    return float_type


def _complex_of(member: h5py.h5t.TypeID) -> h5py.h5t.TypeCompoundID:
    size = member.get_size()
    compound = h5py.h5t.create(h5py.h5t.COMPOUND, 2 * size)
    compound.insert(b"r", 0, member)
    compound.insert(b"i", size, member)
    return compound


def build_external_kspace(
    path: Path, target: Path, *, offset: int = 0, shape: tuple[int, ...] = (1, 2, 2)
) -> Path:
    """``kspace`` (complex64 ``shape``) stored in ``target`` from ``offset`` (HDF5 external
    storage): reading it reads ``target``, any file of the host, whether it exists or not."""
    with h5py.File(path, "w") as f:
        size = int(np.prod(shape)) * 8
        f.create_dataset(
            "kspace", shape=shape, dtype=np.complex64, external=[(str(target), offset, size)]
        )
    return path


def build_custom_float(path: Path, dataset: str = "kspace") -> Path:
    """``dataset`` (``kspace``: complex ``[1, 2, 2]``; else real ``[1, 2, 2]``) of a 64-bit
    float type with a non-standard exponent bias, its bytes in the file."""
    member = _nonstandard_float()
    with h5py.File(path, "w") as f:
        if dataset != "kspace":
            f.create_dataset("kspace", data=np.ones((1, 2, 2), np.complex64))
        file_type = _complex_of(member) if dataset == "kspace" else member
        space = h5py.h5s.create_simple((1, 2, 2))
        h5py.h5d.create(f.id, dataset.encode(), file_type, space)
    return path


def build_virtual_kspace(path: Path, source: Path) -> Path:
    """``kspace``, a virtual dataset mapping ``source``'s ``/kspace`` (a file that need not
    exist): reading it opens ``source``."""
    layout = h5py.VirtualLayout(shape=(1, 2, 2), dtype=np.complex64)
    layout[:] = h5py.VirtualSource(str(source), "kspace", shape=(1, 2, 2))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("kspace", layout)
    return path


def build_linked_kspace(path: Path, kind: str, target: Path | None = None) -> Path:
    """``kspace`` reached by a link: ``kind`` ``"external"`` (to ``target``'s ``/kspace``) or
    ``"soft"`` (to ``/hidden/kspace``, a complex dataset of this file)."""
    with h5py.File(path, "w") as f:
        if kind == "external":
            assert target is not None
            f["kspace"] = h5py.ExternalLink(str(target), "/kspace")
        elif kind == "soft":
            f.create_dataset("hidden/kspace", data=np.ones((1, 2, 2), np.complex64))
            f["kspace"] = h5py.SoftLink("/hidden/kspace")
        else:
            raise ValueError(f"unknown link kind {kind!r}")
    return path


def build_filtered_kspace(path: Path, filter_id: int = 32004) -> Path:
    """``kspace`` (complex64 ``[1, 2, 2]``, one chunk) through the filter ``filter_id`` (the
    default: an id of no filter this HDF5 has, a plugin it would look for), marked optional so
    that HDF5 writes it unfiltered."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((1, 2, 2))
    dcpl.set_filter(filter_id, h5py.h5z.FLAG_OPTIONAL, ())
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((1, 2, 2))
        file_type = _complex_of(h5py.h5t.IEEE_F32LE)
        dataset = h5py.Dataset(h5py.h5d.create(f.id, b"kspace", file_type, space, dcpl=dcpl))
        dataset[...] = np.ones((1, 2, 2), np.complex64)
    return path


def build_chunk_bomb(
    path: Path, chunk_bytes: int = 2**30, *, slices: int = 16, write: bool = True
) -> Path:
    """``kspace`` complex64 ``[slices, 1, H, 4096]`` in one gzip chunk of ``chunk_bytes`` (a
    multiple of ``slices`` x 32 KiB) of zeros, about a thousandth of that in the file: each
    slice is small, but reading one inflates the whole chunk (``write`` False: the chunk
    declared, never written)."""
    width = 4096
    shape = (slices, 1, chunk_bytes // (8 * width * slices), width)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset(
            "kspace", shape=shape, dtype=np.complex64, chunks=shape, compression="gzip"
        )
        if write:
            deflate = zlib.compressobj(9)
            block = bytes(2**24)
            parts = [deflate.compress(block) for _ in range(chunk_bytes // len(block))]
            parts += [deflate.compress(bytes(chunk_bytes % len(block))), deflate.flush()]
            dataset.id.write_direct_chunk((0, 0, 0, 0), b"".join(parts))
    return path


def build_many_slices(path: Path, slices: int = 200_000) -> Path:
    """``kspace`` complex64 ``[slices, 2, 2]``, never written (a file of about 1.4 KB that reads
    as zeros): a slice count that costs per slice, not per byte."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(slices, 2, 2), dtype=np.complex64)
    return path


def build_empty_kspace(path: Path, shape: tuple[int, ...] = (4, 0, 0)) -> Path:
    """``kspace`` complex64 of ``shape`` with an empty dimension."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=shape, dtype=np.complex64)
    return path


def build_nifti_slices(path: Path, slices: int = 200_000) -> Path:
    """A NIfTI-2 volume ``[1, 1, slices]`` of zeros (``.nii.gz``: under 1 KB)."""
    import nibabel

    nibabel.save(nibabel.Nifti2Image(np.zeros((1, 1, slices), np.uint8), np.eye(4)), path)
    return path


def build_png_bomb(path: Path, width: int = 5792, height: int = 5792, mode: str = "L") -> Path:
    """A PNG of zeros, ``width`` x ``height`` in Pillow ``mode``: a few tens of KB on disk."""
    from PIL import Image

    Image.new(mode, (width, height)).save(path, optimize=True)
    return path


def build_tiff_bomb(
    path: Path, shape: tuple[int, ...] = (4096, 8192), dtype: str = "float64"
) -> Path:
    """A zlib-compressed TIFF of zeros of ``shape`` (pages, rows, columns) and ``dtype``,
    written one compressed row at a time: a thousandth of its decoded size on disk."""
    import tifffile

    row = zlib.compress(bytes(shape[-1] * np.dtype(dtype).itemsize), 9)
    rows = (row for _ in range(int(np.prod(shape[:-1]))))
    tifffile.imwrite(
        path, rows, shape=shape, dtype=dtype, compression="zlib", rowsperstrip=1,
        metadata=None, photometric="minisblack",
    )  # fmt: skip
    return path


def build_tiff_pages(path: Path, pages: int = 20_000) -> Path:
    """A TIFF of ``pages`` pages of 2 x 2 pixels (each page its own IFD)."""
    import tifffile

    with tifffile.TiffWriter(path) as tiff:
        for _ in range(pages):
            tiff.write(np.zeros((2, 2), np.uint8), contiguous=False, metadata=None)
    return path


def build_dicom_frames(path: Path, frames: int = 200_000) -> Path:
    """A multi-frame DICOM (pydicom's ``CT_small`` retagged) of ``frames`` frames of 1 x 1."""
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.Rows = dataset.Columns = 1
    dataset.NumberOfFrames = frames
    dataset.PixelData = bytes(2 * frames)
    dataset.save_as(path)
    return path
