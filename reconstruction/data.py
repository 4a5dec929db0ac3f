"""Test images: built-in phantoms, bundled DICOMs, readers for user files, scaling and resizing.

Everything here works offline: Shepp-Logan comes with scikit-image, the two small DICOMs with
pydicom, ellipse phantoms are generated from a seed. Readers return a :class:`LoadedImage`
(a 2-D float32 or complex64 array plus metadata) and raise :class:`ImageReadError`, whose
message names the file and the problem, on anything they cannot read.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reconstruction.bounded import MAX_DECODED_BYTES, ExpansionError, check_gzip

__all__ = [
    "BUILTIN_IMAGES",
    "ImageReadError",
    "LoadedImage",
    "SliceError",
    "Slices",
    "array_sha256",
    "builtin_images",
    "dicom_example",
    "dicom_series_uid",
    "magnitude",
    "random_ellipses",
    "read_dicom_series",
    "read_image",
    "read_images",
    "resize_image",
    "scale_to_range",
    "shepp_logan",
]

#: DICOM attributes kept as metadata. Patient and institution identifiers are never kept.
DICOM_KEYS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "BitsStored",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "MagneticFieldStrength",
    "KVP",
    "SeriesDescription",
)

SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".dcm", ".nii", ".nii.gz")
#: measured k-space (fastMRI HDF5, :mod:`reconstruction.measured`)
KSPACE_SUFFIXES = (".h5", ".hdf5")
#: the most files a DICOM series (a folder) may hold
MAX_SERIES_FILES = 4096
#: the most pixels or voxels a file may decode to (each is converted to float64 once)
MAX_ELEMENTS = 2**25
#: the most slices read of one volume (a fastMRI volume has 16 to 40, a CT series a few
#: hundred): each costs work however small it is
MAX_SLICES = 512
#: Deflated Explicit VR Little Endian: the whole dataset is one zlib stream
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"


class ImageReadError(ValueError):
    """A test image could not be read or used; the message names the file and the problem."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class SliceError(ImageReadError):
    """A slice selection is malformed or out of range for a volume (the field ``slices``)."""


@dataclass(frozen=True)
class LoadedImage:
    """A 2-D image (float32, or complex64 for complex MRI data) and where it came from.

    ``kspace``: for measured data, the slice's fully sampled k-space, complex64 ``[C, H, W]``
    (``[H, W]`` single-coil) in the centred layout; ``array`` is then its ground truth (the
    RSS of the coil images, :mod:`reconstruction.measured`)."""

    array: np.ndarray
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    kspace: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Slices:
    """Which slices of a volume to take: ``text`` is ``all``, or indices and half-open ranges
    separated by commas (``3``, ``2:6``, ``0,4,8:10``); ``None``: the middle slice.

    >>> Slices("0,4:6").indices(8, "v.h5")
    [0, 4, 5]
    >>> Slices().indices(8, "v.h5"), Slices("all").indices(3, "v.h5")
    ([4], [0, 1, 2])
    """

    text: str | None = None

    def indices(self, n: int, source: str | Path) -> list[int]:
        """The selected indices of a volume of ``n`` slices, in order, each once;
        :class:`SliceError` when malformed, out of range or more than ``MAX_SLICES``."""
        if self.text is None:
            return [n // 2]
        text = self.text.strip()
        parts = [f"0:{n}"] if text == "all" else text.split(",")
        chosen: dict[int, None] = {}  # insertion-ordered, each index once
        for part in parts:
            bounds = part.strip().split(":")
            try:
                numbers = [int(b) for b in bounds]
            except ValueError:
                numbers = []
            if not 1 <= len(numbers) <= 2 or min(numbers, default=-1) < 0:
                raise SliceError(
                    source,
                    f"slices {self.text!r}: use 'all' or non-negative indices and ranges "
                    "like '3', '2:6', '0,4,8:10'",
                )
            start, stop = numbers[0], numbers[-1] + (1 if len(numbers) == 1 else 0)
            if stop <= start or stop > n:
                raise SliceError(
                    source, f"slices {part.strip()!r} out of range for a volume of {n} slices"
                )
            new = (stop - start) - sum(start <= i < stop for i in chosen)
            if len(chosen) + new > MAX_SLICES:
                raise SliceError(
                    source,
                    f"slices {self.text!r} select more than {MAX_SLICES} of the volume's {n} "
                    f"slices; at most {MAX_SLICES} are read per volume: select fewer "
                    f"(e.g. '0:{MAX_SLICES}')",
                )
            chosen.update(dict.fromkeys(range(start, stop)))
        return list(chosen)


# ------------------------------------------------------------------------------ phantoms
def shepp_logan(size: int = 256) -> np.ndarray:
    """The (modified) Shepp-Logan phantom of scikit-image, resized to ``size``, in ``[0, 1]``."""
    from skimage.data import shepp_logan_phantom

    image = shepp_logan_phantom().astype(np.float64)
    if image.shape != (size, size):
        image = resize_image(image, (size, size))
    return scale_to_range(image, (0.0, 1.0))


def random_ellipses(
    count: int,
    size: int = 256,
    seed: int = 0,
    *,
    ellipses: tuple[int, int] = (7, 15),
    axes: tuple[float, float] = (0.05, 0.45),
    supersample: int = 2,
) -> np.ndarray:
    """``count`` random-ellipse phantoms ``[count, size, size]`` in ``[0, 1]``, seeded.

    Each image holds a random number of ellipses in ``ellipses`` (inclusive), with semi-axes
    uniform in ``axes`` (fractions of the half-width), random orientation, and random signed
    intensities added on top of each other; everything lies inside the inscribed circle (as CT
    needs). Pixels are averaged over ``supersample**2`` sub-pixels to soften aliasing.

    >>> batch = random_ellipses(2, 32, seed=5)
    >>> batch.shape, float(batch.min()) >= 0.0, float(batch.max()) <= 1.0
    ((2, 32, 32), True, True)
    >>> bool(np.array_equal(batch, random_ellipses(2, 32, seed=5)))
    True
    """
    if count < 1 or size < 4:
        raise ValueError("count must be >= 1 and size >= 4")
    rng = np.random.default_rng(seed)
    fine = size * supersample
    coords = (np.arange(fine) + 0.5) / fine * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((count, size, size), dtype=np.float32)
    for i in range(count):
        image = np.zeros((fine, fine))
        for _ in range(int(rng.integers(ellipses[0], ellipses[1] + 1))):
            a, b = rng.uniform(*axes, size=2)
            radius = max(a, b)
            # centre such that the whole ellipse stays inside the circle of radius 0.95
            r = rng.uniform(0.0, max(0.95 - radius, 0.0))
            phi = rng.uniform(0.0, 2 * math.pi)
            cy, cx = r * math.sin(phi), r * math.cos(phi)
            rot = rng.uniform(0.0, math.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * math.cos(rot) + dy * math.sin(rot)
            v = -dx * math.sin(rot) + dy * math.cos(rot)
            image += rng.uniform(-0.5, 1.0) * ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
        image = np.clip(image, 0.0, None)
        small = image.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        peak = small.max()
        out[i] = small / peak if peak > 0 else small
    return out


def dicom_example(name: str = "CT_small") -> LoadedImage:
    """One of pydicom's bundled test images: ``"CT_small"`` (128x128) or ``"MR_small"`` (64x64)."""
    if name not in ("CT_small", "MR_small"):
        raise ValueError(f"unknown bundled DICOM {name!r}: use 'CT_small' or 'MR_small'")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(f"{name}.dcm")
    if not isinstance(path, str):  # pragma: no cover - pydicom always ships these two
        raise ImageReadError(f"{name}.dcm", "not found in pydicom's bundled test files")
    return read_image(path)


#: how many images the built-in test set holds (its default: two ellipse phantoms)
BUILTIN_IMAGES = 5


def builtin_images(size: int = 128, *, ellipses: int = 2, seed: int = 0) -> list[LoadedImage]:
    """The built-in test set: Shepp-Logan, seeded ellipse phantoms and the bundled DICOMs,
    each resized to ``size`` and scaled to ``[0, 1]``."""
    images = [LoadedImage(shepp_logan(size), "builtin:shepp-logan", {"kind": "phantom"})]
    for i, image in enumerate(random_ellipses(ellipses, size, seed)):
        images.append(
            LoadedImage(image, f"builtin:ellipses-{seed}-{i}", {"kind": "phantom", "seed": seed})
        )
    for name in ("CT_small", "MR_small"):
        loaded = dicom_example(name)
        array = scale_to_range(resize_image(loaded.array, (size, size)), (0.0, 1.0))
        images.append(LoadedImage(array, f"builtin:{name}", loaded.metadata))
    return images


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order (the hash reports print for images and masks).

    >>> array_sha256(np.zeros(2, dtype=np.uint8))[:12]
    '96a296d224f2'
    """
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ------------------------------------------------------------------------------ readers
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | Path, *, slice_index: int | None = None, axis: int = -1) -> LoadedImage:
    """Read a 2-D test image from PNG, TIFF, NPY, DICOM or NIfTI.

    Volumes (3-D NPY/TIFF/NIfTI, multi-frame DICOM) give one slice along ``axis``:
    ``slice_index`` or, by default, the middle one. RGB images are converted to luminance.
    NPY files are read with ``allow_pickle=False``. DICOM pixel values get the rescale slope and
    intercept applied.
    """
    p, array, metadata = _read(path)
    return _finished(p, _to_2d(p, array, slice_index, axis, metadata), metadata)


def read_images(path: str | Path, *, slices: Slices | None = None) -> list[LoadedImage]:
    """Every test image ``path`` holds, as ``slices`` selects them (default: the middle slice):
    the slices of a fastMRI HDF5 file (``.h5``, measured k-space with its ground truth:
    :func:`reconstruction.measured.read_fastmri`), of a DICOM series (a folder of ``.dcm``
    files: :func:`read_dicom_series`) or of a volume (3-D NIfTI, TIFF, NPY, multi-frame DICOM,
    along the last axis); a 2-D image is itself, whatever ``slices`` says."""
    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p, slices)
    if _suffix(p) in KSPACE_SUFFIXES:
        if not p.is_file():
            raise ImageReadError(p, "no such file")
        from reconstruction.measured import read_fastmri

        return read_fastmri(p, slices)
    if slices is None:
        return [read_image(p)]
    p, array, metadata = _read(p)
    if array.ndim != 3:
        return [_finished(p, _to_2d(p, array, None, -1, metadata), metadata)]
    chosen = slices.indices(int(array.shape[-1]), p)
    pixels = math.prod(array.shape[:-1])
    if pixels * len(chosen) > MAX_ELEMENTS:
        raise SliceError(
            p, f"the {len(chosen)} selected slices hold {pixels * len(chosen)} pixels; at most "
            f"{MAX_ELEMENTS} are read per volume: select fewer slices"
        )  # fmt: skip
    out = []
    for index in chosen:
        meta = dict(metadata)
        out.append(_finished(p, _to_2d(p, array, index, -1, meta), meta, f"{p}#slice={index}"))
    return out


def dicom_series_uid(path: str | Path) -> str | None:
    """The ``SeriesInstanceUID`` of a ``.dcm`` file (its header only), or None when it has none,
    is deflated or is no readable DICOM file (reading it as an image then says why)."""
    import pydicom

    try:
        _refuse_deflated(Path(path))
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    uid = header.get("SeriesInstanceUID")
    return str(uid) if uid else None


def read_dicom_series(folder: str | Path, slices: Slices | None = None) -> list[LoadedImage]:
    """The selected slices (default: the middle one) of a DICOM series: the ``.dcm`` files of
    ``folder``, each one 2-D slice, ordered by ``InstanceNumber`` (else ``SliceLocation``)."""
    import pydicom

    p = Path(folder)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".dcm" and f.is_file())
    if not files:
        raise ImageReadError(p, "the folder holds no .dcm file")
    if len(files) > MAX_SERIES_FILES:
        raise ImageReadError(p, f"a series may hold at most {MAX_SERIES_FILES} files")
    keys: dict[str, list[float | None]] = {"InstanceNumber": [], "SliceLocation": []}
    for f in files:
        try:
            _refuse_deflated(f)
            header = pydicom.dcmread(f, stop_before_pixels=True)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f, f"cannot read as .dcm: {exc}") from exc
        for key, values in keys.items():
            value = header.get(key)
            values.append(None if value in (None, "") else float(value))
    order_by = next((k for k, v in keys.items() if None not in v and len(set(v)) == len(v)), None)
    if order_by is None:
        raise ImageReadError(
            p, "the series cannot be ordered: every file needs a distinct InstanceNumber or "
            "SliceLocation"
        )  # fmt: skip
    ordered = [f for _, f in sorted(zip(keys[order_by], files, strict=True))]
    out = []
    shape: tuple[int, ...] | None = None
    for index in (slices or Slices()).indices(len(ordered), p):
        image = read_image(ordered[index])
        if image.array.ndim != 2 or (shape is not None and image.array.shape != shape):
            raise ImageReadError(ordered[index], "the series' slices differ in size")
        shape = image.array.shape
        metadata = {**image.metadata, "series_size": len(ordered), "slice_index": index}
        metadata["series_order"] = order_by
        out.append(LoadedImage(image.array, f"{p}#slice={index}", metadata))
    return out


def _read(path: str | Path) -> tuple[Path, np.ndarray | _Volume, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "no such file")
    suffix = _suffix(p)
    readers = {
        ".png": _read_pillow,
        ".tif": _read_tiff,
        ".tiff": _read_tiff,
        ".npy": _read_npy,
        ".dcm": _read_dicom,
        ".nii": _read_nifti,
        ".nii.gz": _read_nifti,
    }
    reader = readers.get(suffix)
    if reader is None:
        raise ImageReadError(
            p,
            f"unsupported file type {suffix or '(none)'!r}; use one of "
            f"{', '.join(SUFFIXES + KSPACE_SUFFIXES)} or a folder (a DICOM series)",
        )
    try:
        array, metadata = reader(p)
    except ImageReadError:
        raise
    except Exception as exc:  # every library has its own errors; report them uniformly
        raise ImageReadError(p, f"cannot read as {suffix}: {exc}") from exc
    return p, array, metadata


def _finished(
    p: Path, array: np.ndarray, metadata: dict[str, Any], source: str | None = None
) -> LoadedImage:
    if not np.all(np.isfinite(array)):
        raise ImageReadError(p, "the image contains NaN or infinite values")
    dtype = np.complex64 if np.iscomplexobj(array) else np.float32
    return LoadedImage(np.ascontiguousarray(array, dtype=dtype), source or str(p), metadata)


def _to_2d(
    p: Path,
    array: np.ndarray | _Volume,
    slice_index: int | None,
    axis: int,
    metadata: dict[str, Any],
) -> np.ndarray:
    if isinstance(array, np.ndarray) and array.ndim == 2:
        return array
    if array.ndim != 3:
        raise ImageReadError(p, f"expected a 2-D image or a 3-D volume, got shape {array.shape}")
    n = array.shape[axis]
    index = n // 2 if slice_index is None else slice_index
    if not -n <= index < n:
        raise ImageReadError(p, f"slice {index} is out of range for {n} slices along axis {axis}")
    metadata.update(volume_shape=list(array.shape), slice_axis=axis, slice_index=index % n)
    selected: np.ndarray = array.take(index, axis)
    return selected


def _luminance(array: np.ndarray, metadata: dict[str, Any]) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        metadata["converted"] = "RGB to luminance (ITU-R BT.601)"
        out = np.zeros(array.shape[:2])
        for channel, weight in enumerate((0.299, 0.587, 0.114)):  # one float64 plane at a time
            out += weight * array[..., channel]
        return out
    return array


def _read_pillow(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import warnings

    from PIL import Image, ImageMode

    Image.MAX_IMAGE_PIXELS = MAX_ELEMENTS  # Pillow's own bomb check, at this module's cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p, formats=["PNG"])  # the header only; pixels are decoded below
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            p, f"the image declares more than {MAX_ELEMENTS} pixels; at most {MAX_ELEMENTS} "
            "pixels are accepted"
        ) from exc  # fmt: skip
    with im:
        itemsize = np.dtype(ImageMode.getmode(im.mode).typestr).itemsize
        _check_decoded(p, [*im.size, 3 if im.mode == "P" else len(im.getbands())], itemsize)
        metadata: dict[str, Any] = {"format": im.format, "mode": im.mode}
        array = np.asarray(im.convert("RGB") if im.mode == "P" else im)
    return _luminance(array, metadata), metadata


def _read_tiff(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(p) as tiff:
        pages = len(tiff.pages)  # walks the chain of page headers, parses none of them
        if pages > MAX_SLICES:
            raise ImageReadError(
                p, f"the TIFF file holds {pages} pages; at most {MAX_SLICES} are accepted"
            )
        series = tiff.series[0]
        _check_decoded(p, list(series.shape), series.dtype.itemsize)
        array = series.asarray()
    metadata: dict[str, Any] = {"format": "TIFF", "dtype": str(array.dtype)}
    return _luminance(array, metadata), metadata


def _read_npy(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with open(p, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
        except ValueError:
            shape, dtype = (), np.dtype(np.uint8)  # np.load reports what is wrong
        if dtype.itemsize and not dtype.hasobject:
            _check_decoded(p, list(shape), dtype.itemsize)
            if math.prod(shape) * dtype.itemsize > p.stat().st_size:
                raise ImageReadError(p, "the array's header declares more data than the file holds")
    try:
        array = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImageReadError(
                p, "pickled object arrays are refused; save a numeric array"
            ) from exc
        raise
    if not isinstance(array, np.ndarray):
        raise ImageReadError(p, "expected a single .npy array, not an archive")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ImageReadError(p, f"expected a numeric array, got dtype {array.dtype}")
    return array, {"format": "NPY", "dtype": str(array.dtype)}


def _refuse_deflated(p: Path) -> None:
    """Deflated DICOM (the whole dataset one zlib stream) is refused before any dataset is read:
    pydicom inflates it whole, headers too (a decompression bomb)."""
    import pydicom

    meta = pydicom.filereader.read_file_meta_info(p)
    if meta.get("TransferSyntaxUID") == DEFLATED_DICOM:
        raise ImageReadError(
            p, "deflated DICOM (the whole dataset zlib-compressed) is not accepted; send it "
            "uncompressed or with compressed pixel data (JPEG, JPEG 2000, RLE)"
        )  # fmt: skip


def _read_dicom(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom

    _refuse_deflated(p)
    dataset = pydicom.dcmread(p)
    if "PixelData" not in dataset:
        raise ImageReadError(p, "the DICOM file holds no pixel data")
    declared = [
        int(dataset.get("Rows", 0) or 0),
        int(dataset.get("Columns", 0) or 0),
        int(dataset.get("NumberOfFrames", 1) or 1),
        int(dataset.get("SamplesPerPixel", 1) or 1),
    ]
    _check_decoded(p, declared, max(int(dataset.get("BitsAllocated", 8) or 8) // 8, 1))
    if declared[2] > MAX_SLICES:
        raise ImageReadError(
            p, f"the DICOM file declares {declared[2]} frames; at most {MAX_SLICES} are accepted"
        )
    try:
        array = dataset.pixel_array.astype(np.float64)
    except Exception as exc:
        raise ImageReadError(
            p,
            f"cannot decode the pixel data (transfer syntax "
            f"{dataset.file_meta.get('TransferSyntaxUID', 'unknown')}): {exc}",
        ) from exc
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    metadata: dict[str, Any] = {"format": "DICOM"}
    for key in DICOM_KEYS:
        if key in dataset:
            value = dataset.get(key)
            metadata[key] = [float(v) for v in value] if key == "PixelSpacing" else _plain(value)
    return array * slope + intercept, metadata


def _check_decoded(p: Path, shape: list[int], itemsize: int) -> None:
    """Refuse, before decoding, an image whose declared size passes the cap."""
    declared = math.prod(shape) * itemsize
    if declared > MAX_DECODED_BYTES or math.prod(shape) > MAX_ELEMENTS:
        raise ImageReadError(
            p,
            f"the image declares {declared} bytes ({'x'.join(map(str, shape))}); at most "
            f"{MAX_DECODED_BYTES} bytes and {MAX_ELEMENTS} pixels are accepted",
        )


def _plain(value: Any) -> Any:
    if isinstance(value, int | float | str):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class _Volume:
    """A NIfTI volume read slice by slice through nibabel's array proxy: only the slices taken
    are read (a 512 x 512 x 300 CT volume holds more voxels than one file may decode to)."""

    def __init__(self, p: Path, proxy: Any, shape: tuple[int, ...]) -> None:
        self.p, self.proxy, self.shape, self.ndim = p, proxy, shape, len(shape)

    def take(self, index: int, axis: int) -> np.ndarray:
        key: list[Any] = [slice(None)] * len(self.proxy.shape)
        key[axis % self.ndim] = index
        try:
            return np.asarray(self.proxy[tuple(key)], dtype=np.float64)
        except Exception as exc:
            raise ImageReadError(self.p, f"cannot read slice {index}: {exc}") from exc


def _read_nifti(p: Path) -> tuple[np.ndarray | _Volume, dict[str, Any]]:
    import nibabel

    if _suffix(p) == ".nii.gz":
        try:
            check_gzip(p)
        except ExpansionError as exc:
            raise ImageReadError(p, str(exc)) from exc
    image: Any = nibabel.load(p)
    shape = tuple(int(n) for n in image.shape)
    shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(shape) not in (2, 3):
        raise ImageReadError(p, f"expected a 2-D or 3-D NIfTI image, got shape {list(shape)}")
    itemsize = image.get_data_dtype().itemsize
    if _suffix(p) == ".nii" and image.dataobj.offset + math.prod(shape) * itemsize > (
        p.stat().st_size
    ):
        raise ImageReadError(p, "the header declares more voxels than the file holds")
    # one slice along any axis must decode within the cap; the volume, within the file
    _check_decoded(p, list(shape) if len(shape) == 2 else sorted(shape)[1:], itemsize)
    zooms = [float(z) for z in image.header.get_zooms()[: len(shape)]]
    metadata = {"format": "NIfTI", "voxel_size": zooms}
    if len(shape) == 2:
        return np.asarray(image.dataobj, dtype=np.float64), metadata
    return _Volume(p, image.dataobj, shape), metadata


# ------------------------------------------------------------------------ preparation
def magnitude(image: Any) -> np.ndarray:
    """A real float64 image: ``|image|`` for a complex one, else its values.

    >>> magnitude(np.array([3 + 4j, -1j])).tolist()
    [5.0, 1.0]
    >>> magnitude(np.array([-1, 2], dtype=np.int16)).tolist()
    [-1.0, 2.0]
    """
    a = np.asarray(image)
    return (np.abs(a) if np.iscomplexobj(a) else a).astype(np.float64)


def scale_to_range(image: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """Map an image linearly onto ``intensity_range`` (its min to ``lo``, its max to ``hi``).

    Complex images keep their phase: the magnitude is scaled so that its maximum is ``hi``
    (``lo`` must then be 0).
    """
    lo, hi = (float(v) for v in intensity_range)
    if not hi > lo:
        raise ValueError(f"intensity_range must have lo < hi, got {intensity_range!r}")
    a = np.asarray(image)
    if np.iscomplexobj(a):
        if lo != 0.0:
            raise ValueError("complex images can only be scaled to a range starting at 0")
        peak = float(np.abs(a).max())
        if peak == 0.0:
            raise ValueError("cannot scale an all-zero image")
        return (a * (hi / peak)).astype(np.complex64)
    vmin, vmax = float(a.min()), float(a.max())
    if vmax == vmin:
        raise ValueError("cannot scale a constant image to an intensity range")
    return ((a - vmin) * ((hi - lo) / (vmax - vmin)) + lo).astype(np.float32)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize with anti-aliasing (scikit-image), real and imaginary parts separately."""
    from skimage.transform import resize

    a = np.asarray(image)
    if a.shape == tuple(shape):
        return a
    if np.iscomplexobj(a):
        return resize_image(a.real, shape) + 1j * resize_image(a.imag, shape)
    out: np.ndarray = resize(
        a.astype(np.float64), shape, order=1, anti_aliasing=True, preserve_range=True
    )
    return out
