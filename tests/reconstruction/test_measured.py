"""Measured k-space: fastMRI HDF5 files, their ground truth, crop and bad files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from reconstruction.data import ImageReadError, SliceError, Slices, read_images
from reconstruction.measured import fit_kspace, read_fastmri, simulated_kspace
from reconstruction.operators import MultiCoilMRI, SingleCoilMRI
from tests.reconstruction.hostile_files import (
    build_chunk_bomb,
    build_custom_float,
    build_empty_kspace,
    build_external_kspace,
    build_filtered_kspace,
    build_linked_kspace,
    build_many_slices,
    build_virtual_kspace,
)
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
    # a file whose declared reconstruction size is larger than its grid (gave ValueError)
    claims = replace(first, metadata={**first.metadata, "reconstruction_size": [96, 32]})
    with pytest.raises(ImageReadError, match=r"reconstruction size \[96, 32\] is larger"):
        fit_kspace(claims, (96, 32))


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


# ------------------------------------------------------------------ hostile files
SECRET = b"-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"


def _refusal(path: Path, slices: Slices | None = None) -> str:
    with pytest.raises(ImageReadError) as info:
        read_images(path, slices=slices)
    return str(info.value).replace(str(path), "<file>")


def test_external_storage_is_refused_without_opening_the_named_file(tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_bytes(SECRET)
    existing = _refusal(build_external_kspace(tmp_path / "a.h5", secret))
    missing = _refusal(build_external_kspace(tmp_path / "b.h5", tmp_path / "no-such-file"))
    assert existing == missing  # no existence oracle
    assert "'kspace' uses external storage" in existing
    assert "id_rsa" not in existing
    assert "BEGIN" not in existing


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p, t: build_virtual_kspace(p, t), "'kspace' is a virtual dataset"),
        (lambda p, t: build_linked_kspace(p, "external", t), "'kspace' is an external link"),
        (lambda p, _: build_linked_kspace(p, "soft"), "'kspace' is a soft link"),
    ],
)
def test_virtual_datasets_and_links_are_refused_whether_the_target_exists(
    tmp_path: Path, build: Callable[[Path, Path], Path], message: str
) -> None:
    target = write_fastmri(tmp_path / "target.h5", slices=1)
    existing = _refusal(build(tmp_path / "a.h5", target))
    missing = _refusal(build(tmp_path / "b.h5", tmp_path / "missing.h5"))
    assert existing == missing
    assert message in existing


@pytest.mark.parametrize("dataset", ["kspace", "reconstruction_rss"])
def test_non_standard_float_types_are_refused(tmp_path: Path, dataset: str) -> None:
    message = _refusal(build_custom_float(tmp_path / "f.h5", dataset))
    assert f"'{dataset}'" in message
    assert "IEEE float32 or float64" in message


def test_filters_other_than_gzip_shuffle_and_lzf_are_refused(tmp_path: Path) -> None:
    assert "the HDF5 filter 32004; only" in _refusal(build_filtered_kspace(tmp_path / "p.h5"))
    scaled = tmp_path / "scaleoffset.h5"
    with h5py.File(scaled, "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 4, 4), np.complex64))
        f.create_dataset("reconstruction_esc", data=np.ones((1, 4, 4)), scaleoffset=2)
    assert f"'reconstruction_esc' uses the HDF5 filter {h5py.h5z.FILTER_SCALEOFFSET}" in (
        _refusal(scaled)
    )
    for compression in ("gzip", "lzf"):
        path = write_fastmri(tmp_path / f"{compression}.h5", compression=compression)
        (image,) = read_images(path)
        assert image.kspace is not None
        assert image.kspace.shape == (4, 64, 32)


def test_header_must_be_one_string_stored_in_the_file(tmp_path: Path) -> None:
    path = write_fastmri(tmp_path / "h.h5", header=False)
    with h5py.File(path, "a") as f:
        f.create_dataset("ismrmrd_header", data=np.arange(4))
    assert "'ismrmrd_header' must be one string" in _refusal(path)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_external(str(secret).encode(), 0, len(SECRET))  # h5py drops it on scalars
    string = h5py.h5t.C_S1.copy()
    string.set_size(len(SECRET))
    with h5py.File(path, "a") as f:
        del f["ismrmrd_header"]
        scalar = h5py.h5s.create(h5py.h5s.SCALAR)
        h5py.h5d.create(f.id, b"ismrmrd_header", string, scalar, dcpl=dcpl)
    assert "'ismrmrd_header' uses external storage" in _refusal(path)


def test_chunks_are_bounded_before_any_is_inflated(tmp_path: Path) -> None:
    # one declared 128 MiB chunk over 16 slices of 8 MiB: refused by its size
    bomb = build_chunk_bomb(tmp_path / "bomb.h5", 2**27, write=False)
    assert "'kspace' is stored in chunks of 134217728 bytes; at most 67108864" in _refusal(bomb)
    tiny = tmp_path / "tiny.h5"
    with h5py.File(tiny, "w") as f:  # a million one-element chunks in one slice
        f.create_dataset("kspace", shape=(2, 1024, 1024), dtype=np.complex64, chunks=(1, 1, 1))
    assert "would inflate 1048576 chunks" in _refusal(tiny)


def test_a_chunk_spanning_slices_counts_once_per_slice_read(tmp_path: Path) -> None:
    # 16 slices of 4 MiB in one 64 MiB chunk: each slice read inflates the whole chunk
    path = build_chunk_bomb(tmp_path / "span.h5", 2**26, write=False)
    assert len(read_images(path, slices=Slices("0:8"))) == 8  # 8 x 64 MiB: at the cap
    assert "would inflate 9 chunks, 603979776 bytes" in _refusal(path, Slices("0:9"))


def test_slice_count_and_empty_shapes_are_refused(tmp_path: Path) -> None:
    many = build_many_slices(tmp_path / "many.h5")  # 200,000 slices in 1.4 KB
    with pytest.raises(SliceError, match=r"select more than 512 of the volume's 200000 slices"):
        read_images(many, slices=Slices("all"))
    with pytest.raises(SliceError, match="at most 512 are read per volume"):
        read_images(many, slices=Slices("0:400,300:700"))
    assert len(read_images(many, slices=Slices("0:400,300:512"))) == 512
    for shape in [(4, 0, 0), (4, 1, 1), (0, 8, 8), (2, 0, 8, 8)]:
        message = _refusal(build_empty_kspace(tmp_path / "empty.h5", shape))
        assert f"'kspace' has the shape {list(shape)}; every dimension must be at least 1" in (
            message
        )


def test_fastmri_sized_volumes_pass_the_caps(tmp_path: Path) -> None:
    # a knee volume (36 slices of 15 coils x 640 x 368), contiguous and as h5py chunks it
    path = tmp_path / "knee.h5"
    with h5py.File(path, "w") as f:  # declared only: reads as zeros
        f.create_dataset("kspace", shape=(36, 15, 640, 368), dtype=np.complex64)
        f.create_dataset("packed", shape=(36, 15, 640, 368), dtype=np.complex64, compression="gzip")
        f.create_dataset("reconstruction_rss", shape=(36, 320, 320), dtype=np.float32)
    (image,) = read_images(path)
    assert image.metadata["slice_index"] == 18
    with h5py.File(path, "a") as f:
        f.move("packed", "kspace2")
        del f["kspace"]
        f.move("kspace2", "kspace")
    assert len(read_images(path, slices=Slices("0:2"))) == 2
