"""Test images: phantoms, bundled DICOMs, readers and their error messages."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from reconstruction.data import (
    ImageReadError,
    SliceError,
    Slices,
    builtin_images,
    dicom_example,
    random_ellipses,
    read_dicom_series,
    read_image,
    read_images,
    resize_image,
    scale_to_range,
    shepp_logan,
)
from tests.reconstruction.measured_files import write_dicom_series


def test_shepp_logan() -> None:
    image = shepp_logan(96)
    assert image.shape == (96, 96)
    assert image.dtype == np.float32
    assert image.min() == 0.0
    assert image.max() == 1.0


def test_random_ellipses_are_seeded_inside_the_circle() -> None:
    batch = random_ellipses(3, 64, seed=1)
    assert batch.shape == (3, 64, 64)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, random_ellipses(3, 64, seed=1))
    assert not np.array_equal(batch, random_ellipses(3, 64, seed=2))
    yy, xx = np.mgrid[:64, :64] + 0.5 - 32
    assert np.all(batch[:, np.hypot(yy, xx) > 32] == 0)
    assert all(np.unique(image).size > 5 for image in batch)


def test_bundled_dicoms_keep_metadata_without_identifiers() -> None:
    ct = dicom_example("CT_small")
    assert ct.array.shape == (128, 128)
    assert ct.array.dtype == np.float32
    assert ct.metadata["Modality"] == "CT"
    assert ct.metadata["PixelSpacing"] == pytest.approx([0.661468, 0.661468])
    assert ct.array.min() < -500  # rescale intercept applied: Hounsfield units
    assert "PatientName" not in ct.metadata
    assert "PatientID" not in ct.metadata
    mr = dicom_example("MR_small")
    assert mr.array.shape == (64, 64)
    assert mr.metadata["Modality"] == "MR"
    with pytest.raises(ValueError, match="unknown bundled DICOM"):
        dicom_example("brain")


def test_builtin_set() -> None:
    images = builtin_images(64)
    assert [i.source for i in images] == [
        "builtin:shepp-logan",
        "builtin:ellipses-0-0",
        "builtin:ellipses-0-1",
        "builtin:CT_small",
        "builtin:MR_small",
    ]
    for image in images:
        assert image.array.shape == (64, 64)
        assert image.array.min() == pytest.approx(0.0)
        assert image.array.max() == pytest.approx(1.0)


def test_png_and_rgb(tmp_path: Path) -> None:
    gray = (np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    loaded = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(loaded.array, gray.astype(np.float32))
    rgb = np.stack([gray, gray, gray], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    color = read_image(tmp_path / "c.png")
    np.testing.assert_allclose(color.array, gray, atol=1e-3)
    assert "luminance" in color.metadata["converted"]


def test_tiff_volume_slice(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    tifffile.imwrite(tmp_path / "v.tif", volume)
    loaded = read_image(tmp_path / "v.tif", slice_index=1, axis=0)
    np.testing.assert_array_equal(loaded.array, volume[1])
    assert loaded.metadata["slice_index"] == 1
    middle = read_image(tmp_path / "v.tif", axis=0)
    np.testing.assert_array_equal(middle.array, volume[2])


def test_npy_real_and_complex(tmp_path: Path) -> None:
    z = (np.ones((8, 8)) + 1j * np.arange(64).reshape(8, 8)).astype(np.complex128)
    np.save(tmp_path / "z.npy", z)
    loaded = read_image(tmp_path / "z.npy")
    assert loaded.array.dtype == np.complex64
    np.testing.assert_allclose(loaded.array, z)


def test_nifti_slice_choice(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((12, 10, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "v.nii.gz")
    loaded = read_image(tmp_path / "v.nii.gz", slice_index=4)
    np.testing.assert_allclose(loaded.array, data[:, :, 4])
    assert loaded.metadata["voxel_size"] == [0.5, 0.5, 2.0]
    assert loaded.metadata["volume_shape"] == [12, 10, 6]


def test_nifti_volume_slices(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((12, 10, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii")
    loaded = read_images(tmp_path / "v.nii", slices=Slices("1,4:6"))
    assert [image.metadata["slice_index"] for image in loaded] == [1, 4, 5]
    assert loaded[1].source.endswith("v.nii#slice=4")
    np.testing.assert_allclose(loaded[1].array, data[:, :, 4])
    assert [i.metadata["slice_index"] for i in read_images(tmp_path / "v.nii")] == [3]
    with pytest.raises(SliceError, match="'6' out of range for a volume of 6 slices"):
        read_images(tmp_path / "v.nii", slices=Slices("6"))
    # a 2-D image is itself, whatever the selection
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat.png")
    assert len(read_images(tmp_path / "flat.png", slices=Slices("3"))) == 1


@pytest.mark.parametrize("key", ["InstanceNumber", "SliceLocation"])
def test_dicom_series_is_ordered(tmp_path: Path, key: str) -> None:
    means = write_dicom_series(tmp_path / "series", [2, 0, 3, 1], key=key)
    loaded = read_dicom_series(tmp_path / "series", Slices("all"))
    assert [float(i.array.mean()) for i in loaded] == means
    assert loaded[0].metadata["series_order"] == key
    assert loaded[0].metadata["series_size"] == 4
    assert [i.metadata["slice_index"] for i in read_images(tmp_path / "series")] == [2]
    with pytest.raises(SliceError, match="out of range for a volume of 4 slices"):
        read_images(tmp_path / "series", slices=Slices("2:5"))


def test_bad_dicomwrite_dicom_series(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match=r"holds no \.dcm file"):
        read_dicom_series(tmp_path / "empty")
    write_dicom_series(tmp_path / "same", [1, 1])
    with pytest.raises(ImageReadError, match="cannot be ordered"):
        read_dicom_series(tmp_path / "same")


def test_bundled_nifti_reads() -> None:
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    loaded = read_image(path)
    assert loaded.array.ndim == 2
    assert loaded.metadata["format"] == "NIfTI"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "no such file"),
        ("image.bmp", b"BM...", "unsupported file type '.bmp'"),
        ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "cannot read as .png"),
        ("broken.dcm", b"not a dicom", "cannot read as .dcm"),
        ("broken.nii", b"\x00" * 10, "cannot read as .nii"),
    ],
)
def test_bad_files_name_file_and_problem(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as info:
        read_image(path)
    assert name in str(info.value)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="pickled object arrays are refused"):
        read_image(tmp_path / "obj.npy")


def test_bad_shapes_and_values(tmp_path: Path) -> None:
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(ImageReadError, match=r"4d\.npy: expected a 2-D image or a 3-D volume"):
        read_image(tmp_path / "4d.npy")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan))
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "vol.npy", np.zeros((3, 4, 4)))
    with pytest.raises(ImageReadError, match="slice 7 is out of range for 3 slices"):
        read_image(tmp_path / "vol.npy", slice_index=7, axis=0)
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    with pytest.raises(ImageReadError, match="numeric"):
        read_image(tmp_path / "str.npy")


def test_scaling_and_resizing() -> None:
    image = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(scale_to_range(image, (-1.0, 1.0)), np.array([[-1, -0.5], [0, 1]]))
    z = np.array([[1 + 1j, 0], [0, 2j]])
    scaled = scale_to_range(z, (0.0, 1.0))
    assert np.abs(scaled).max() == pytest.approx(1.0)
    assert np.angle(scaled[0, 0]) == pytest.approx(np.pi / 4)
    with pytest.raises(ValueError, match="constant"):
        scale_to_range(np.ones((3, 3)), (0.0, 1.0))
    with pytest.raises(ValueError, match="lo < hi"):
        scale_to_range(image, (1.0, 0.0))
    big = resize_image(shepp_logan(64), (32, 48))
    assert big.shape == (32, 48)
    assert resize_image(z, (4, 4)).dtype.kind == "c"


def test_a_selection_is_capped_and_linear_in_its_size() -> None:
    assert Slices("0:400,300:512").indices(10**6, "v") == list(range(512))
    with pytest.raises(SliceError, match="select more than 512 of the volume's 1000000 slices"):
        Slices("0:999999").indices(10**6, "v")  # refused before anything is listed
    with pytest.raises(SliceError, match="at most 512 are read per volume"):
        Slices("all").indices(513, "v")
    assert len(Slices("all").indices(512, "v")) == 512
