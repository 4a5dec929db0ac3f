"""Bounded parsing: archives judged by their declared sizes before any member is read, gzip
counted in constant memory, images refused by their declared size before decoding."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from reconstruction.bounded import ARCHIVE_SLACK, ExpansionError, check_gzip, check_zip
from reconstruction.data import (
    ImageReadError,
    SliceError,
    Slices,
    dicom_series_uid,
    read_dicom_series,
    read_image,
    read_images,
)
from tests.reconstruction.hostile_files import (
    build_dicom_frames,
    build_nifti_slices,
    build_png_bomb,
    build_tiff_pages,
)


def _zeros_zip(path: Path, expanded: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("m/data/w", "w", force_zip64=True) as member:
            for _ in range(expanded // 2**20):
                member.write(bytes(2**20))
    return path


def test_a_zip_is_judged_by_its_declared_sizes(tmp_path: Path) -> None:
    small = _zeros_zip(tmp_path / "small.zip", ARCHIVE_SLACK // 2)
    assert check_zip(small) == ARCHIVE_SLACK // 2  # small archives may exceed the ratio
    bomb = _zeros_zip(tmp_path / "bomb.zip", 64 * 2**20)
    with pytest.raises(ExpansionError, match="times its size"):
        check_zip(bomb)
    with pytest.raises(ExpansionError, match="at most 1000 bytes"):
        check_zip(small, max_bytes=1000)


def test_gzip_is_counted_member_by_member_and_stops_at_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes(3000)) + gzip.compress(b"abc"))
    assert check_gzip(path) == 3003
    with pytest.raises(ExpansionError, match="more than 1000 bytes"):
        check_gzip(path, max_bytes=1000)


def test_declared_sizes_are_checked_before_decoding(tmp_path: Path) -> None:
    big = Image.new("L", (6000, 6000))  # 36 M pixels: past the cap, tiny as a PNG
    big.save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="at most"):
        read_image(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((6000, 6000), np.uint8), compression="zlib")
    with pytest.raises(ImageReadError, match="at most"):
        read_image(tmp_path / "big.tif")


def test_dicom_declared_pixels_and_deflated_datasets(tmp_path: Path) -> None:
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str)
    dataset = dcmread(source)
    dataset.Rows = dataset.Columns = 60000
    dataset.save_as(tmp_path / "huge.dcm")
    with pytest.raises(ImageReadError, match="at most"):
        read_image(tmp_path / "huge.dcm")
    deflated = dcmread(source)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="deflated DICOM"):
        read_image(tmp_path / "deflated.dcm")
    # nor as a member of a series, nor when its series is looked up: no header is inflated
    assert dicom_series_uid(tmp_path / "deflated.dcm") is None
    series = tmp_path / "series"
    series.mkdir()
    (tmp_path / "deflated.dcm").rename(series / "deflated.dcm")
    with pytest.raises(ImageReadError, match="deflated DICOM"):
        read_dicom_series(series)


def test_pillow_reads_png_only_within_its_bomb_limit(tmp_path: Path) -> None:
    bomb = build_png_bomb(tmp_path / "bomb.png", 8192, 8192)  # 67 M pixels, 66 KB
    with pytest.raises(ImageReadError, match="more than 33554432 pixels; at most"):
        read_image(bomb)
    # a palette image decodes to RGB: counted as three bands
    palette = build_png_bomb(tmp_path / "palette.png", 3400, 3400, "P")
    with pytest.raises(ImageReadError, match="declares 34680000 bytes"):
        read_image(palette)
    Image.new("L", (8, 8)).save(tmp_path / "gif.png", format="GIF")  # any other format
    with pytest.raises(ImageReadError, match=r"cannot read as \.png"):
        read_image(tmp_path / "gif.png")


def test_tiff_pages_and_dicom_frames_are_counted_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="holds 600 pages; at most 512"):
        read_image(build_tiff_pages(tmp_path / "pages.tif", 600))
    with pytest.raises(ImageReadError, match="declares 200000 frames; at most 512"):
        read_images(build_dicom_frames(tmp_path / "frames.dcm"), slices=Slices("all"))


def test_nifti_volumes_are_read_slice_by_slice(tmp_path: Path) -> None:
    many = build_nifti_slices(tmp_path / "many.nii.gz")  # 200,000 slices in 984 bytes
    with pytest.raises(SliceError, match="select more than 512 of the volume's 200000"):
        read_images(many, slices=Slices("all"))
    # a CT volume of 512 x 512 x 300 int16 (more voxels than one file may decode): sparse
    header = nibabel.Nifti1Header()
    header.set_data_shape((512, 512, 300))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    ct = tmp_path / "ct.nii"
    with open(ct, "wb") as f:
        f.write(header.binaryblock + bytes(4))
        f.truncate(352 + 512 * 512 * 300 * 2)
    middle = read_image(ct)
    assert middle.array.shape == (512, 512)
    assert middle.metadata["slice_index"] == 150
    assert len(read_images(ct, slices=Slices("0:100"))) == 100
    with pytest.raises(SliceError, match="the 300 selected slices hold 78643200 pixels"):
        read_images(ct, slices=Slices("all"))
    with open(ct, "r+b") as f:
        f.truncate(352 + 512 * 512 * 2)
    with pytest.raises(ImageReadError, match="declares more voxels than the file holds"):
        read_image(ct)
