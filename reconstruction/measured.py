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
from typing import Any

import numpy as np

from reconstruction.bounded import MAX_DECODED_BYTES
from reconstruction.data import ImageReadError, LoadedImage, Slices
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
    k-space; the truth is at the measured grid until :func:`fit_kspace` fits it."""
    import h5py

    p = Path(path)
    try:
        handle = h5py.File(p, "r", locking=False)
    except OSError as exc:
        raise ImageReadError(p, f"not a readable HDF5 file: {exc}") from exc
    with handle:
        if "kspace" not in handle or not isinstance(handle["kspace"], h5py.Dataset):
            raise ImageReadError(p, "the HDF5 file has no 'kspace' dataset")
        ds = handle["kspace"]
        if ds.ndim not in (3, 4) or not np.issubdtype(ds.dtype, np.complexfloating):
            raise ImageReadError(
                p,
                f"'kspace' must be complex [slices, coils, H, W] or [slices, H, W], got "
                f"{list(ds.shape)} of {ds.dtype}",
            )
        per_slice = math.prod(ds.shape[1:]) * ds.dtype.itemsize
        n = int(ds.shape[0])
        chosen = (slices or Slices()).indices(n, p)
        if per_slice * len(chosen) > MAX_DECODED_BYTES:
            raise ImageReadError(
                p,
                f"the selected slices of 'kspace' hold {per_slice * len(chosen)} bytes; at most "
                f"{MAX_DECODED_BYTES} are accepted (select fewer slices)",
            )
        metadata = _metadata(p, handle, ds)
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


def _metadata(p: Path, handle: Any, ds: Any) -> dict[str, Any]:
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
    if "ismrmrd_header" in handle:
        metadata.update(_header(p, handle["ismrmrd_header"]))
    for name in REFERENCES:
        if name in handle:
            reference = handle[name]
            if reference.ndim != 3 or reference.shape[0] != ds.shape[0]:
                raise ImageReadError(
                    p, f"{name!r} must be [slices, h, w] with {ds.shape[0]} slices, got "
                    f"{list(reference.shape)}"
                )  # fmt: skip
            metadata["reference"] = name
            # fastMRI crops to the reference's size when there is one, else to the header's
            metadata["reconstruction_size"] = [int(v) for v in reference.shape[1:]]
    if "max" not in metadata and "reference" in metadata:
        metadata["max"] = float(np.max(handle[metadata["reference"]]))
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
