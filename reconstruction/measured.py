"""Measured MRI data: fastMRI HDF5 files (k-space and its reference reconstructions).

A fastMRI file (https://github.com/facebookresearch/fastMRI, ``fastmri/data/mri_data.py``)
holds ``kspace`` ``[slices, coils, H, W]`` (multi-coil) or ``[slices, H, W]`` (single-coil),
complex, in the centred layout (DC at ``(H//2, W//2)``; the image is the orthonormal centred
inverse DFT, fastMRI's ``ifft2c``), the reference reconstructions ``reconstruction_rss``
(multi-coil) or ``reconstruction_esc`` (single-coil) ``[slices, h, w]`` at the reconstruction
size (320 x 320 for the public knee and brain sets), the acquisition's ``ismrmrd_header``
(XML: encoded and reconstruction matrix sizes) and attributes (``max``: the volume's largest
reference value, ``acquisition``, ...).

Each selected slice becomes a :class:`~reconstruction.data.LoadedImage` whose ``kspace`` is
the measured k-space and whose ``array`` is the ground truth: the root-sum-of-squares (one
coil: the magnitude) of the fully sampled coil images, computed at the grid the network
takes (:func:`fit_kspace`). Fitted to the reconstruction size, the coil images are first
centre-cropped as fastMRI crops them (``fastmri.data.transforms.center_crop``), so the truth
equals the file's ``reconstruction_rss``; the k-space is then the crop's centred DFT (the
readout oversampling removed).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reconstruction.bounded import MAX_DECODED_BYTES
from reconstruction.data import ImageReadError, LoadedImage, Slices

if TYPE_CHECKING:  # the operators load torch, which reading a file does not need
    from reconstruction.operators import LinearOperator

__all__ = [
    "centre_crop",
    "fit_kspace",
    "read_fastmri",
    "rss",
    "simulated_kspace",
]

#: the reference reconstruction datasets a fastMRI file may hold
REFERENCES = ("reconstruction_rss", "reconstruction_esc")
#: the most bytes an ``ismrmrd_header`` may hold (it is a few kB in fastMRI's files)
MAX_HEADER_BYTES = 2**20
ISMRMRD = "{http://www.ismrm.org/ISMRMRD}"
#: the HDF5 filters a dataset may pass through (their ids): any other, szip and plugins
#: included, is refused before HDF5 looks for it
ACCEPTED_FILTERS = {1: "gzip (deflate)", 2: "shuffle", 32000: "LZF"}
#: the largest chunk a dataset may declare: reading any element of a chunk inflates all of it
#: (a fastMRI knee slice, 15 coils x 640 x 368 complex64, is 28 MB)
MAX_CHUNK_BYTES = 64 * 2**20
#: the most bytes the chunks of a selection may inflate to, and the most chunks it may touch
#: (each costs about 5 us to look up, however small)
MAX_CHUNK_READ_BYTES = 2 * MAX_DECODED_BYTES
MAX_CHUNKS_READ = 2**18
#: the smallest image (H, W) a k-space or reference slice may have
MIN_GRID = 2


def _image(kspace: np.ndarray) -> np.ndarray:
    """The centred orthonormal inverse 2-D DFT over the last two axes (fastMRI's ``ifft2c``)."""
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=(-2, -1))


def _kspace(image: np.ndarray) -> np.ndarray:
    """The centred orthonormal 2-D DFT over the last two axes (fastMRI's ``fft2c``)."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1))


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares over the coil axis of ``[C, H, W]`` (``[H, W]``: the magnitude)."""
    a = np.asarray(coil_images)
    out: np.ndarray = np.abs(a) if a.ndim == 2 else np.sqrt(np.sum(np.abs(a) ** 2, axis=0))
    return out


def centre_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centre ``shape`` of the last two axes, as ``fastmri.data.transforms.center_crop``
    takes it (start ``(n - size) // 2``)."""
    h, w = array.shape[-2:]
    ch, cw = shape
    if not (0 < ch <= h and 0 < cw <= w):
        raise ValueError(f"cannot crop {[h, w]} to {[ch, cw]}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return array[..., top : top + ch, left : left + cw]


def simulated_kspace(truth: np.ndarray, op: LinearOperator) -> np.ndarray:
    """The fully sampled centred k-space of an image ``[H, W]`` under ``op``'s coil maps
    (``[C, H, W]``; single-coil: ``[H, W]``): what a measured image's k-space stands beside."""
    maps = getattr(op, "sensitivities", None)
    image = truth if maps is None else maps.numpy() * truth[None]
    return _kspace(image).astype(np.complex64)


def fit_kspace(image: LoadedImage, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, str]:
    """``(kspace, truth, grid)`` of a measured slice on the network's grid ``size``.

    The measured grid when it is ``size``; else the reconstruction size (the header's, or the
    reference's) when that is ``size``: coil images centre-cropped, truth their RSS, k-space
    their centred DFT. ``grid`` says which (``"measured"`` or ``"reconstruction"``). Any other
    size raises :class:`~reconstruction.data.ImageReadError` (k-space is never resampled)."""
    assert image.kspace is not None
    kspace = image.kspace
    measured = tuple(kspace.shape[-2:])
    if measured == tuple(size):
        return kspace, rss(_image(kspace)), "measured"
    recon = image.metadata.get("reconstruction_size")
    if recon is not None and tuple(recon) == tuple(size):
        if recon[0] > measured[0] or recon[1] > measured[1]:
            raise ImageReadError(
                image.source,
                f"the reconstruction size {list(recon)} is larger than the k-space grid "
                f"{list(measured)}; it cannot be cropped from it",
            )
        coil_images = centre_crop(_image(kspace), (int(recon[0]), int(recon[1])))
        return _kspace(coil_images).astype(np.complex64), rss(coil_images), "reconstruction"
    sizes = f"{list(measured)}" + (f" (reconstruction size {list(recon)})" if recon else "")
    raise ImageReadError(
        image.source,
        f"the k-space grid {sizes} does not match the network's image_size {list(size)}; "
        "measured k-space is never resampled",
    )


def read_fastmri(path: str | Path, slices: Slices | None = None) -> list[LoadedImage]:
    """The selected slices (default: the middle one) of a fastMRI HDF5 file, each with its
    k-space; the truth is at the measured grid until :func:`fit_kspace` fits it.

    Every dataset read (``kspace``, the reference, ``ismrmrd_header``) is first checked
    without reading its data (:func:`_checked`): reached by a hard link, stored in this file
    (no external storage, no virtual dataset), through gzip, shuffle or LZF only, in chunks of
    at most ``MAX_CHUNK_BYTES``, of standard IEEE floats (or a string); the bytes and chunks the
    selection reads are bounded before it is read."""
    import h5py

    p = Path(path)
    try:
        handle = h5py.File(p, "r", locking=False)
    except OSError as exc:
        raise ImageReadError(p, f"not a readable HDF5 file: {exc}") from exc
    with handle:
        ds = _checked(p, handle, "kspace", "complex")
        if ds is None:
            raise ImageReadError(p, "the HDF5 file has no 'kspace' dataset")
        references = [(n, r) for n in REFERENCES if (r := _checked(p, handle, n, "float"))]
        header = _checked(p, handle, "ismrmrd_header", "string")
        n = int(ds.shape[0])
        chosen = (slices or Slices()).indices(n, p)
        per_slice = math.prod(ds.shape[1:]) * ds.dtype.itemsize
        if per_slice * len(chosen) > MAX_DECODED_BYTES:
            raise ImageReadError(
                p,
                f"the selected slices of 'kspace' hold {per_slice * len(chosen)} bytes; at most "
                f"{MAX_DECODED_BYTES} are accepted (select fewer slices)",
            )
        _check_read(p, "kspace", ds, len(chosen))
        metadata = _metadata(p, handle, ds, references, header)
        out = []
        for index in chosen:
            kspace = np.asarray(ds[index], dtype=np.complex64)
            if not np.all(np.isfinite(kspace)):
                raise ImageReadError(p, f"'kspace' slice {index} holds NaN or infinite values")
            truth = rss(_image(kspace)).astype(np.float32)
            out.append(
                LoadedImage(
                    truth,
                    f"{p}#slice={index}",
                    {**metadata, "slice_index": index},
                    kspace=np.ascontiguousarray(kspace),
                )
            )
    return out


def _checked(p: Path, handle: Any, name: str, kind: str) -> Any:
    """The dataset ``name`` of the file's root (None when there is none), refused with
    :class:`~reconstruction.data.ImageReadError` unless it is reached by a hard link, stored in
    this file through accepted filters and chunks, and of the ``kind`` it must be
    (``"complex"``, ``"float"``, ``"string"``). Reads no data: nothing outside the file is
    opened, so the answer is the same whatever other files exist."""
    import h5py

    key = name.encode()
    if not handle.id.links.exists(key):
        return None
    link = handle.id.links.get_info(key).type
    if link != h5py.h5l.TYPE_HARD:
        kind_of = {h5py.h5l.TYPE_SOFT: "a soft", h5py.h5l.TYPE_EXTERNAL: "an external"}
        raise ImageReadError(
            p, f"{name!r} is {kind_of.get(link, 'a user-defined')} link; only datasets stored "
            "in the file itself (hard links) are accepted"
        )  # fmt: skip
    ds = handle[name]
    if not isinstance(ds, h5py.Dataset):
        raise ImageReadError(p, f"{name!r} is not a dataset")
    plist = ds.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise ImageReadError(
            p, f"{name!r} is a virtual dataset (its data in other datasets or files); virtual "
            "datasets are not accepted"
        )  # fmt: skip
    if plist.get_external_count() > 0:
        raise ImageReadError(
            p, f"{name!r} uses external storage (its data in other files); datasets with "
            "external storage are not accepted"
        )  # fmt: skip
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ACCEPTED_FILTERS:
            raise ImageReadError(
                p, f"{name!r} uses the HDF5 filter {code}; only "
                f"{', '.join(ACCEPTED_FILTERS.values())} are accepted"
            )  # fmt: skip
    if plist.get_layout() == h5py.h5d.CHUNKED:
        chunk_bytes = math.prod(plist.get_chunk()) * ds.id.get_type().get_size()
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise ImageReadError(
                p, f"{name!r} is stored in chunks of {chunk_bytes} bytes; at most "
                f"{MAX_CHUNK_BYTES} are accepted (reading one slice inflates a whole chunk)"
            )  # fmt: skip
    {"complex": _check_complex, "float": _check_float, "string": _check_string}[kind](p, name, ds)
    return ds


def _ieee(float_type: Any) -> bool:
    """Whether an HDF5 type is IEEE float32 or float64 (either byte order), not a float of the
    file's own definition (precision, exponent, mantissa, bias)."""
    from h5py import h5t

    standard = (h5t.IEEE_F32LE, h5t.IEEE_F32BE, h5t.IEEE_F64LE, h5t.IEEE_F64BE)
    return float_type.get_class() == h5t.FLOAT and any(float_type.equal(s) for s in standard)


def _check_complex(p: Path, name: str, ds: Any) -> None:
    import h5py

    file_type = ds.id.get_type()
    compound = file_type.get_class() == h5py.h5t.COMPOUND and file_type.get_nmembers() == 2
    if not compound or ds.ndim not in (3, 4) or (
        (file_type.get_member_name(0), file_type.get_member_name(1)) != (b"r", b"i")
    ):  # fmt: skip
        raise ImageReadError(
            p,
            f"{name!r} must be complex [slices, coils, H, W] or [slices, H, W], got "
            f"{list(ds.shape or ())} of {_dtype(ds)}",
        )
    real, imag = (file_type.get_member_type(i) for i in (0, 1))
    if not (
        _ieee(real)
        and real.equal(imag)
        and file_type.get_member_offset(1) == real.get_size()
        and file_type.get_size() == 2 * real.get_size()
    ):
        raise ImageReadError(
            p, f"{name!r} is not of a standard complex type; only pairs of IEEE float32 or "
            "float64 (complex64, complex128 as h5py writes them) are accepted"
        )  # fmt: skip
    _check_shape(p, name, ds.shape)


def _check_float(p: Path, name: str, ds: Any) -> None:
    if not _ieee(ds.id.get_type()) or ds.ndim != 3:
        raise ImageReadError(
            p, f"{name!r} must be [slices, h, w] of IEEE float32 or float64, got "
            f"{list(ds.shape or ())} of {_dtype(ds)}"
        )  # fmt: skip
    _check_shape(p, name, ds.shape)


def _check_string(p: Path, name: str, ds: Any) -> None:
    import h5py

    file_type = ds.id.get_type()
    if file_type.get_class() != h5py.h5t.STRING or ds.shape != ():
        raise ImageReadError(p, f"{name!r} must be one string (the ISMRMRD XML)")
    if not file_type.is_variable_str() and file_type.get_size() > MAX_HEADER_BYTES:
        raise ImageReadError(p, f"{name!r} is longer than {MAX_HEADER_BYTES} bytes")


def _check_shape(p: Path, name: str, shape: tuple[int, ...]) -> None:
    if min(shape) < 1 or min(shape[-2:]) < MIN_GRID:
        raise ImageReadError(
            p, f"{name!r} has the shape {list(shape)}; every dimension must be at least 1 and "
            f"the image's at least {MIN_GRID}"
        )  # fmt: skip


def _dtype(ds: Any) -> str:
    try:
        return str(ds.dtype)
    except (TypeError, ValueError):
        return "an unsupported HDF5 type"


def _check_read(p: Path, name: str, ds: Any, rows: int) -> None:
    """Refuse reading ``rows`` slices of ``ds`` when their chunks would inflate more than
    ``MAX_CHUNK_READ_BYTES`` or number more than ``MAX_CHUNKS_READ`` (each slice read on its
    own: a chunk spanning several slices is inflated once per slice)."""
    import h5py

    plist = ds.id.get_create_plist()
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return
    chunk = plist.get_chunk()
    per_slice = math.prod(
        -(-size // step) for size, step in zip(ds.shape[1:], chunk[1:], strict=True)
    )
    chunks = per_slice * rows
    inflated = chunks * math.prod(chunk) * ds.id.get_type().get_size()
    if chunks > MAX_CHUNKS_READ or inflated > MAX_CHUNK_READ_BYTES:
        raise ImageReadError(
            p, f"reading the selected slices of {name!r} would inflate {chunks} chunks, "
            f"{inflated} bytes; at most {MAX_CHUNKS_READ} chunks and {MAX_CHUNK_READ_BYTES} "
            "bytes are accepted (select fewer slices, or store one slice per chunk)"
        )  # fmt: skip


def _metadata(
    p: Path, handle: Any, ds: Any, references: list[tuple[str, Any]], header: Any
) -> dict[str, Any]:
    """What the audit keeps of a fastMRI file: sizes, the volume's maximum, the header's
    system and matrix sizes; no identifiers (fastMRI's headers carry none)."""
    metadata: dict[str, Any] = {
        "format": "fastMRI HDF5",
        "volume_shape": list(ds.shape),
        "coils": int(ds.shape[1]) if ds.ndim == 4 else 1,
    }
    for key in ("acquisition", "max", "norm"):
        if key in handle.attrs:
            metadata[key] = _plain(handle.attrs[key])
    if header is not None:
        metadata.update(_header(p, header))
    for name, reference in references:
        if reference.shape[0] != ds.shape[0]:
            raise ImageReadError(
                p, f"{name!r} must be [slices, h, w] with {ds.shape[0]} slices, got "
                f"{list(reference.shape)}"
            )  # fmt: skip
        metadata["reference"] = name
        # fastMRI crops to the reference's size when there is one, else to the header's
        metadata["reconstruction_size"] = [int(v) for v in reference.shape[1:]]
    if "max" not in metadata and references:
        reference = references[-1][1]
        size = reference.size * reference.dtype.itemsize
        if size > MAX_DECODED_BYTES:
            raise ImageReadError(
                p, f"{references[-1][0]!r} holds {size} bytes; at most {MAX_DECODED_BYTES} are "
                "read for the volume's maximum (store it as the attribute 'max')"
            )  # fmt: skip
        _check_read(p, references[-1][0], reference, int(reference.shape[0]))
        metadata["max"] = float(np.max(reference))
    return metadata


def _header(p: Path, dataset: Any) -> dict[str, Any]:
    raw = dataset[()]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if len(text) > MAX_HEADER_BYTES:
        raise ImageReadError(p, f"'ismrmrd_header' is longer than {MAX_HEADER_BYTES} bytes")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ImageReadError(p, f"'ismrmrd_header' is not valid XML: {exc}") from exc
    out: dict[str, Any] = {}
    for key, where in (("encoded_size", "encodedSpace"), ("reconstruction_size", "reconSpace")):
        node = root.find(f"{ISMRMRD}encoding/{ISMRMRD}{where}/{ISMRMRD}matrixSize")
        if node is not None:
            try:
                out[key] = [int(node.findtext(f"{ISMRMRD}{axis}") or "") for axis in "xy"]
            except ValueError as exc:
                raise ImageReadError(p, f"'ismrmrd_header' {where}: {exc}") from exc
    for key, where in (
        ("system_vendor", "acquisitionSystemInformation/systemVendor"),
        ("field_strength_t", "acquisitionSystemInformation/systemFieldStrength_T"),
    ):
        value = root.findtext("/".join(f"{ISMRMRD}{part}" for part in where.split("/")))
        if value:
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
