"""Small synthetic fastMRI-style HDF5 files (no download): ellipse phantoms measured through
birdcage coils, with the readout oversampled, the reference RSS reconstruction at the
reconstruction size, attributes and an ISMRMRD header, laid out as fastMRI's files; and DICOM
series made from pydicom's bundled ``MR_small``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from reconstruction.data import random_ellipses
from reconstruction.measured import centre_crop, rss
from reconstruction.operators import birdcage_sensitivities

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation>
    <systemVendor>SIEMENS</systemVendor>
    <systemFieldStrength_T>2.89362</systemFieldStrength_T>
  </acquisitionSystemInformation>
  <encoding>
    <encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>
  </encoding>
</ismrmrdHeader>
"""


def _kspace(image: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1))


def _image(kspace: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=(-2, -1))


def write_fastmri(
    path: Path,
    *,
    size: int = 32,
    oversample: int = 2,
    coils: int | None = 4,
    slices: int = 3,
    seed: int = 0,
    header: bool = True,
    compression: str | None = None,
) -> Path:
    """A fastMRI-style file: ``kspace`` ``[slices, coils, oversample * size, size]`` (``coils``
    None: single-coil ``[slices, H, W]``), the reference (``reconstruction_rss`` /
    ``reconstruction_esc``) ``[slices, size, size]``, attributes and header; ``compression``
    (``"gzip"``, ``"lzf"``): every dataset chunked by h5py, shuffled and compressed."""
    rows = oversample * size
    objects = np.zeros((slices, rows, size), dtype=np.complex128)
    top = (rows - size) // 2
    objects[:, top : top + size, :] = random_ellipses(slices, size, seed)
    if coils is None:
        kspace = _kspace(objects)
    else:
        maps = birdcage_sensitivities(coils, (rows, size), dtype=np.complex128)
        kspace = _kspace(maps[None] * objects[:, None])
    reference = np.stack([rss(centre_crop(_image(k), (size, size))) for k in kspace])
    packed = {} if compression is None else {"compression": compression, "shuffle": True}
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64), **packed)
        name = "reconstruction_esc" if coils is None else "reconstruction_rss"
        f.create_dataset(name, data=reference.astype(np.float32), **packed)
        if header:
            text = HEADER.format(ex=rows, ey=size, rx=size, ry=size)
            f.create_dataset("ismrmrd_header", data=text.encode())
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(reference.max())
        f.attrs["norm"] = float(np.linalg.norm(reference))
        f.attrs["patient_id"] = "a-hash-in-fastmri"
    return path


def write_dicom_series(
    folder: Path, order: list[int], *, key: str = "InstanceNumber"
) -> list[float]:
    """A DICOM series from pydicom's MR_small, file names in another order than ``key``;
    returns each written slice's mean pixel value, in ``key`` order."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder.mkdir()
    means = {}
    for position, number in enumerate(order):
        dataset = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
        pixels = dataset.pixel_array.copy()
        pixels[:] = 10 * (number + 1)
        dataset.PixelData = pixels.tobytes()
        if key == "InstanceNumber":
            dataset.InstanceNumber = number
        else:
            del dataset.InstanceNumber
            dataset.SliceLocation = 2.5 * number
        dataset.save_as(folder / f"file{position}.dcm")
        means[number] = float(10 * (number + 1))
    return [means[n] for n in sorted(means)]
