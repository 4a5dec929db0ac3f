"""Sampling patterns: nesting across ratios, exact ratios, determinism, density profiles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconstruction.sampling import (
    angle_subsets,
    cartesian_lines,
    extend_angles,
    extend_mask,
    mask_ratio,
    radial_lines,
    variable_density,
)

MaskFactory = Callable[[tuple[int, int], float, int], np.ndarray]

PATTERNS: dict[str, MaskFactory] = {
    "variable_density": lambda s, r, seed: variable_density(s, r, seed),
    "variable_density_no_centre": lambda s, r, seed: variable_density(
        s, r, seed, center_fraction=0.0
    ),
    "lines_random": lambda s, r, seed: cartesian_lines(s, r, seed, kind="random"),
    "lines_equispaced": lambda s, r, seed: cartesian_lines(s, r, seed, kind="equispaced"),
    "lines_gaussian": lambda s, r, seed: cartesian_lines(s, r, seed, kind="gaussian"),
    "lines_rows": lambda s, r, seed: cartesian_lines(s, r, seed, axis=0),
    "radial": lambda s, r, seed: radial_lines(s, r, seed),
}
LINE_PATTERNS = {"lines_random", "lines_equispaced", "lines_gaussian", "lines_rows"}

shapes = st.tuples(st.integers(8, 72), st.integers(8, 72))
ratios = st.floats(0.02, 1.0)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@settings(max_examples=25, deadline=None)
@given(shape=shapes, r1=ratios, r2=ratios, seed=st.integers(0, 2**31 - 1))
def test_masks_are_nested(
    name: str, shape: tuple[int, int], r1: float, r2: float, seed: int
) -> None:
    low, high = sorted((r1, r2))
    small, large = PATTERNS[name](shape, low, seed), PATTERNS[name](shape, high, seed)
    assert small.shape == large.shape == shape
    assert small.dtype == bool
    assert np.all(small <= large)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@settings(max_examples=25, deadline=None)
@given(shape=shapes, ratio=ratios, seed=st.integers(0, 2**31 - 1))
def test_ratio_is_met_to_one_candidate(
    name: str, shape: tuple[int, int], ratio: float, seed: int
) -> None:
    mask = PATTERNS[name](shape, ratio, seed)
    if name in LINE_PATTERNS:
        n = shape[0] if name == "lines_rows" else shape[1]
        lines = mask.any(axis=1) if name == "lines_rows" else mask.any(axis=0)
        assert int(lines.sum()) == max(1, round(ratio * n))
    else:
        assert int(mask.sum()) == max(1, round(ratio * mask.size))


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_within_one_percent_at_audit_sizes(name: str) -> None:
    for ratio in (0.1, 0.15, 0.25, 0.33, 0.5):
        achieved = mask_ratio(PATTERNS[name]((256, 256), ratio, 7))
        # 2-D patterns: within 1 % of the request; line patterns are quantised to whole lines
        # (1/256 of k-space each), so within 1 % of k-space.
        assert abs(achieved - ratio) <= (0.01 if name in LINE_PATTERNS else 0.01 * ratio)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_seeded_and_deterministic(name: str) -> None:
    a = PATTERNS[name]((64, 64), 0.25, 1)
    np.testing.assert_array_equal(a, PATTERNS[name]((64, 64), 0.25, 1))
    assert not np.array_equal(a, PATTERNS[name]((64, 64), 0.25, 2))


def test_variable_density_centre_and_profile() -> None:
    mask = variable_density((128, 128), 0.2, seed=3, center_fraction=0.08)
    assert mask[60:69, 60:69].all()  # fully sampled centre around DC (64, 64)
    yy, xx = np.mgrid[:128, :128] - 64
    radius = np.hypot(yy, xx)
    inner = mask[(radius > 10) & (radius < 25)].mean()
    outer = mask[radius > 50].mean()
    assert inner > 3 * outer > 0


def test_cartesian_lines_are_full_lines_with_centre() -> None:
    mask = cartesian_lines((40, 64), 0.25, seed=0, center_fraction=0.125)
    assert np.all(mask == mask[0])
    assert mask[0, 28:36].all()  # 8 centre lines around DC (column 32)


def test_equispaced_lines_are_exactly_equispaced_for_powers_of_two() -> None:
    mask = cartesian_lines((16, 64), 0.25, seed=5, kind="equispaced", center_fraction=0.0)
    columns = np.flatnonzero(mask[0])
    assert len(columns) == 16
    assert set(np.diff(columns)) == {4}


def test_gaussian_lines_concentrate_at_the_centre() -> None:
    mask = cartesian_lines((8, 256), 0.2, seed=2, kind="gaussian", center_fraction=0.0)
    distance = np.abs(np.flatnonzero(mask[0]) - 128)
    assert np.median(distance) < 40


def test_radial_spokes() -> None:
    few = radial_lines((64, 64), spokes=8, seed=1)
    many = radial_lines((64, 64), spokes=32, seed=1)
    assert few[32, 32]
    assert np.all(few <= many)
    assert 0.05 < mask_ratio(few) < mask_ratio(many) < 0.6
    by_ratio = radial_lines((64, 64), 0.3, seed=1)
    assert mask_ratio(by_ratio) == pytest.approx(0.3, abs=1 / 4096)
    with pytest.raises(ValueError, match="exactly one"):
        radial_lines((64, 64), 0.3, spokes=4)


@settings(max_examples=30, deadline=None)
@given(
    n_full=st.integers(4, 400),
    r1=ratios,
    r2=ratios,
    seed=st.integers(0, 1000),
    kind=st.sampled_from(["uniform", "random"]),
)
def test_angle_subsets_are_nested_and_exact(
    n_full: int, r1: float, r2: float, seed: int, kind: str
) -> None:
    low, high = sorted((r1, r2))
    small = angle_subsets(low, seed, n_full=n_full, kind=kind)  # type: ignore[arg-type]
    large = angle_subsets(high, seed, n_full=n_full, kind=kind)  # type: ignore[arg-type]
    assert set(small.tolist()) <= set(large.tolist())
    assert np.all((large >= 0) & (large < np.pi))
    assert np.all(np.diff(large) > 0)
    assert abs(len(large) - high * n_full) <= 0.5 + 1e-9 or len(large) == 1


def test_uniform_angles_spread_evenly() -> None:
    angles = angle_subsets(50 / 720, seed=0, n_full=720)
    assert len(angles) == 50
    gaps = np.diff(np.concatenate([angles, [angles[0] + np.pi]]))
    assert gaps.max() <= 2 * gaps.min() + np.pi / 720 + 1e-12  # one grid step


@pytest.mark.parametrize("source", ["vd", "lines"])
def test_extend_mask_keeps_mask_and_profile(source: str) -> None:
    shape = (128, 128)
    given_mask = (
        variable_density(shape, 0.2, seed=11)
        if source == "vd"
        else cartesian_lines(shape, 0.2, seed=11, kind="gaussian")
    )
    own = mask_ratio(given_mask)
    np.testing.assert_array_equal(extend_mask(given_mask, own, seed=4), given_mask)
    bigger = extend_mask(given_mask, 0.4, seed=4)
    smaller = extend_mask(given_mask, 0.1, seed=4)
    assert np.all(given_mask <= bigger)
    assert np.all(smaller <= given_mask)
    assert mask_ratio(bigger) == pytest.approx(0.4, abs=1 / 128)
    assert mask_ratio(smaller) == pytest.approx(0.1, abs=1 / 128)
    if source == "lines":
        assert np.all(bigger == bigger[0])
        assert np.all(smaller == smaller[0])
    # density falls off with the distance from DC as in the given mask
    yy, xx = np.mgrid[:128, :128] - 64
    radius = np.hypot(yy, xx) if source == "vd" else np.abs(xx)
    for m in (given_mask, bigger, smaller):
        assert m[(radius > 4) & (radius < 20)].mean() > 1.5 * m[radius > 40].mean()
    # the fully sampled centre survives a subset
    assert smaller[62:67, 62:67].all()


def test_bad_arguments() -> None:
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            variable_density((32, 32), bad)
    with pytest.raises(ValueError, match="shape"):
        variable_density((1, 32), 0.5)
    with pytest.raises(ValueError, match="line kind"):
        cartesian_lines((32, 32), 0.5, kind="poisson")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boolean"):
        extend_mask(np.ones((4, 4)), 0.5)


def test_extend_angles_doubles_and_halves_equispaced_sets() -> None:
    base = np.arange(50) * np.pi / 50
    doubled = extend_angles(base, 100)
    np.testing.assert_allclose(doubled, np.arange(100) * np.pi / 100, atol=1e-12)
    halved = extend_angles(base, 25)
    np.testing.assert_allclose(np.diff(halved), np.pi / 25, atol=1e-12)
    assert set(halved.tolist()) <= set(base.tolist())
    np.testing.assert_array_equal(extend_angles(base, 50), base)


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(2, 60),
    n1=st.integers(1, 200),
    n2=st.integers(1, 200),
    seed=st.integers(0, 100),
)
def test_extend_angles_is_nested(count: int, n1: int, n2: int, seed: int) -> None:
    base = np.sort(np.random.default_rng(seed).uniform(0, np.pi, count))
    low, high = sorted((min(n1, 8 * count), min(n2, 8 * count)))
    small, large = extend_angles(base, low), extend_angles(base, high)
    assert len(small) == low
    assert len(large) == high
    assert set(small.tolist()) <= set(large.tolist())
    if high >= count:
        assert set(base.tolist()) <= set(large.tolist())


def test_extend_angles_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="count must be in"):
        extend_angles(np.arange(4) * np.pi / 4, 0)
    with pytest.raises(ValueError, match="count must be in"):
        extend_angles(np.arange(4) * np.pi / 4, 33, refine=8)
    with pytest.raises(ValueError, match="finite radians"):
        extend_angles(np.array([0.0, np.nan]), 2)
