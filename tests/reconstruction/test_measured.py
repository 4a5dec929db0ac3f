"""Measured k-space: fastMRI HDF5 files, their ground truth, crop and bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from reconstruction.data import ImageReadError, SliceError, Slices, read_images
from reconstruction.measured import fit_kspace, read_fastmri, simulated_kspace
from reconstruction.operators import MultiCoilMRI, SingleCoilMRI
from tests.reconstruction.measured_files import write_fastmri


def test_multicoil_slices_truth_and_metadata(tmp_path: Path) -> None:
    path = write_fastmri(tmp_path / "knee.h5", slices=4)
    loaded = read_fastmri(path, Slices("1:3"))
    assert [image.metadata["slice_index"] for image in loaded] == [1, 2]
    first = loaded[0]
    assert first.source.endswith("knee.h5#slice=1")
    assert first.kspace is not None
    assert first.kspace.shape == (4, 64, 32)
    assert first.kspace.dtype == np.complex64
    meta = first.metadata
    assert meta["coils"] == 4
    assert meta["volume_shape"] == [4, 4, 64, 32]
    assert meta["reconstruction_size"] == [32, 32]
    assert meta["encoded_size"] == [64, 32]
    assert meta["system_vendor"] == "SIEMENS"
    assert meta["acquisition"] == "CORPD_FBK"
    assert "patient_id" not in meta
    with h5py.File(path) as f:
        reference = np.asarray(f["reconstruction_rss"][1])
    # fitted to the reconstruction size: cropped as fastMRI crops, truth = the file's RSS
    kspace, truth, grid = fit_kspace(first, (32, 32))
    assert grid == "reconstruction"
    assert kspace.shape == (4, 32, 32)
    np.testing.assert_allclose(truth, reference, atol=1e-5 * reference.max())
    # at the measured grid: the uncropped RSS, which holds the same object
    kspace, truth, grid = fit_kspace(first, (64, 32))
    assert grid == "measured"
    assert kspace.shape == (4, 64, 32)
    np.testing.assert_allclose(truth[16:48], reference, atol=1e-5 * reference.max())
    with pytest.raises(ImageReadError, match=r"does not match the network's image_size \[48, 48\]"):
        fit_kspace(first, (48, 48))


def test_default_is_the_middle_slice_and_all_is_every_slice(tmp_path: Path) -> None:
    path = write_fastmri(tmp_path / "v.h5", slices=5)
    assert [i.metadata["slice_index"] for i in read_images(path)] == [2]
    assert len(read_images(path, slices=Slices("all"))) == 5


def test_single_coil(tmp_path: Path) -> None:
    path = write_fastmri(tmp_path / "sc.h5", coils=None, oversample=1)
    (image,) = read_fastmri(path)
    assert image.kspace is not None
    assert image.kspace.shape == (32, 32)
    assert image.metadata["reference"] == "reconstruction_esc"
    op = SingleCoilMRI(np.ones((32, 32), dtype=bool))
    kspace, truth, _ = fit_kspace(image, (32, 32))
    np.testing.assert_allclose(simulated_kspace(truth, op), kspace, atol=1e-4)


def test_simulated_kspace_is_the_operators_full_sampling() -> None:
    truth = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    op = MultiCoilMRI(np.ones((16, 16), dtype=bool), 3)
    import torch

    y = op.A(torch.from_numpy(truth)[None])[0].numpy()
    np.testing.assert_allclose(op.from_grid(torch.from_numpy(simulated_kspace(truth, op))), y,
                               atol=1e-5)  # fmt: skip


def test_bad_files(tmp_path: Path) -> None:
    no_kspace = tmp_path / "nok.h5"
    with h5py.File(no_kspace, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ImageReadError, match="no 'kspace' dataset"):
        read_fastmri(no_kspace)
    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as f:
        f.create_dataset("kspace", data=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ImageReadError, match="must be complex"):
        read_fastmri(real)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(ImageReadError, match="not a readable HDF5 file"):
        read_fastmri(garbage)
    with pytest.raises(ImageReadError, match="no such file"):
        read_images(tmp_path / "missing.h5")
    path = write_fastmri(tmp_path / "v.h5", slices=3)
    with pytest.raises(SliceError, match=r"'3' out of range for a volume of 3 slices"):
        read_fastmri(path, Slices("3"))
    with pytest.raises(SliceError, match="use 'all' or non-negative indices"):
        read_fastmri(path, Slices("-1"))
    broken = tmp_path / "header.h5"
    write_fastmri(broken, header=False)
    with h5py.File(broken, "a") as f:
        f.create_dataset("ismrmrd_header", data=b"<unclosed")
    with pytest.raises(ImageReadError, match="not valid XML"):
        read_fastmri(broken)
