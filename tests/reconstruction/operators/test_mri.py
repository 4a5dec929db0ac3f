"""MRI-specific properties: the centred convention, grids, coil maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconstruction.operators import (
    MultiCoilMRI,
    OperatorShapeError,
    SingleCoilMRI,
    birdcage_sensitivities,
    normalize_sensitivities,
)
from reconstruction.sampling import variable_density


def test_dc_is_at_the_centre_index() -> None:
    full = np.ones((8, 10), dtype=bool)
    k = SingleCoilMRI(full).to_grid(SingleCoilMRI(full).A(torch.ones(1, 8, 10)))
    expected = torch.zeros(8, 10, dtype=torch.complex64)
    expected[4, 5] = np.sqrt(80.0)
    torch.testing.assert_close(k[0], expected, atol=1e-5, rtol=0)


def test_fully_sampled_single_coil_is_unitary_and_centred_fft() -> None:
    op = SingleCoilMRI(np.ones((6, 7), dtype=bool))
    x = torch.randn(2, 6, 7, dtype=torch.complex128)
    k = op.to_grid(op.A(x))
    reference = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(k.numpy(), reference, atol=1e-12)
    torch.testing.assert_close(op.A_adjoint(op.A(x)), x)


def test_adjoint_is_zero_filled_reconstruction_and_exact_pinv() -> None:
    mask = variable_density((16, 16), 0.3, seed=2)
    op = SingleCoilMRI(mask)
    y = torch.randn(3, op.out_shape[0], dtype=torch.complex128)
    torch.testing.assert_close(op.A(op.A_adjoint(y)), y)  # A A^H = I
    torch.testing.assert_close(op.A_dagger(y), op.A_adjoint(y))
    grid = op.to_grid(y)
    assert torch.count_nonzero(grid[0]) == int(mask.sum())
    torch.testing.assert_close(op.from_grid(grid), y)
    zero_filled = torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(grid, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )
    torch.testing.assert_close(op.A_adjoint(y), zero_filled)


def test_mask_validation() -> None:
    with pytest.raises(OperatorShapeError, match="2-D"):
        SingleCoilMRI(np.ones(5, dtype=bool))
    with pytest.raises(OperatorShapeError, match="no k-space sample"):
        SingleCoilMRI(np.zeros((4, 4), dtype=bool))
    with pytest.raises(OperatorShapeError, match="boolean"):
        SingleCoilMRI(np.full((4, 4), 0.5))
    assert SingleCoilMRI(np.eye(4, dtype=np.uint8)).ratio == 0.25


@pytest.mark.parametrize("coils", [1, 4, 15])
def test_birdcage_maps_are_normalised(coils: int) -> None:
    maps = birdcage_sensitivities(coils, (24, 20))
    assert maps.shape == (coils, 24, 20)
    assert maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-5)
    if coils > 1:  # coils differ: each is strongest near its own position
        peaks = {int(np.argmax(np.abs(m))) for m in maps}
        assert len(peaks) == coils


def test_user_maps_are_normalised_on_their_support() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))
    maps[:, :2] = 0.0
    normed = normalize_sensitivities(maps)
    rss = np.sum(np.abs(normed) ** 2, axis=0)
    np.testing.assert_allclose(rss[2:], 1.0)
    np.testing.assert_array_equal(rss[:2], 0.0)
    op = MultiCoilMRI(np.ones((8, 8), dtype=bool), maps)
    assert op.coils == 3
    assert op.out_shape == (3, 64)
    assert op.norm() == pytest.approx(1.0, rel=1e-6)


def test_multicoil_adjoint_is_coil_combined_zero_filled() -> None:
    mask = variable_density((16, 16), 0.5, seed=0)
    maps = birdcage_sensitivities(4, (16, 16), dtype=np.complex128)
    multi = MultiCoilMRI(mask, maps)
    single = SingleCoilMRI(mask)
    y = torch.randn(2, 4, single.out_shape[0], dtype=torch.complex128)
    per_coil = torch.stack([single.A_adjoint(y[:, c]) for c in range(4)], dim=1)
    expected = torch.sum(torch.from_numpy(maps).conj() * per_coil, dim=1)
    torch.testing.assert_close(multi.A_adjoint(y), expected)


def test_multicoil_map_shape_mismatch_is_reported() -> None:
    with pytest.raises(OperatorShapeError, match=r"\[C, 8, 8\]"):
        MultiCoilMRI(np.ones((8, 8), dtype=bool), np.ones((2, 8, 9), dtype=complex))
