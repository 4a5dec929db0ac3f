"""Coil maps: ESPIRiT (SigPy) from the ACS region of measured k-space, and their record."""

from __future__ import annotations

import numpy as np
import pytest

from reconstruction.coils import Espirit, acs_width, espirit_maps, maps_record
from reconstruction.data import shepp_logan
from reconstruction.measured import _image, simulated_kspace
from reconstruction.operators import MultiCoilMRI

SIZE = 64


def _lines(acs: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[:, SIZE // 2 - acs // 2 : SIZE // 2 - acs // 2 + acs] = True
    mask[:, 1::4] = True
    return mask


def test_espirit_recovers_the_coils_from_the_acs_region() -> None:
    x = shepp_logan(SIZE)
    kspace = simulated_kspace(x, MultiCoilMRI(np.ones((SIZE, SIZE), dtype=bool), 4))
    mask = _lines(16)
    assert acs_width(mask) == 16
    maps, record = espirit_maps(kspace, mask)
    assert maps.shape == (4, SIZE, SIZE)
    assert maps.dtype == np.complex64
    # the SENSE combination of the fully sampled coil images gives the object back
    combined = np.abs(np.sum(np.conj(maps) * _image(kspace), axis=0))
    inside = x > 0.05
    assert np.abs(combined - x)[inside].max() < 1e-3
    assert record == {
        "implementation": "sigpy.mri.app.EspiritCalib",
        "sigpy": record["sigpy"],
        "calib_width": 16,
        "kernel_width": 6,
        "thresh": 0.02,
        "crop": 0.95,
        "max_iter": 100,
    }
    assert record["sigpy"].startswith("0.1.")
    # calibration uses only the ACS region: k-space outside it does not matter
    acs = np.zeros_like(kspace)
    acs[:, :, 24:40] = kspace[:, :, 24:40]
    again, _ = espirit_maps(acs, mask)
    np.testing.assert_allclose(np.abs(again), np.abs(maps), atol=1e-4)


def test_espirit_needs_an_acs_region_larger_than_its_kernel() -> None:
    kspace = np.ones((4, SIZE, SIZE), dtype=np.complex64)
    with pytest.raises(ValueError, match="fully sampled centre is 6x6"):
        espirit_maps(kspace, _lines(6))
    with pytest.raises(ValueError, match="multi-coil k-space"):
        espirit_maps(kspace[0], _lines(16), Espirit())


def test_maps_record() -> None:
    maps = np.ones((2, 4, 4), dtype=np.complex64)
    record = maps_record("shipped", maps, file="maps.npy")
    assert record["source"] == "shipped"
    assert record["coils"] == 2
    assert record["file"] == "maps.npy"
    assert len(record["sha256"]) == 64
