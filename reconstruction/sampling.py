"""Seeded, nested sampling patterns: MRI k-space masks and CT angle subsets.

Every pattern works the same way: a seeded *priority order* over the candidate samples (k-space
locations, phase-encoding lines, spokes, angles) is drawn once per ``(pattern, shape, seed,
parameters)``, and the mask at ratio ``r`` keeps the first ``round(r * n)`` candidates of that
order. Hence

* **nesting**: for the same seed and pattern, the mask at a lower ratio is a subset of the mask
  at a higher ratio (what the more-samples test needs);
* **exact ratios**: the achieved ratio is the requested one up to one candidate (one pixel for
  2-D patterns, one line for Cartesian lines, one angle for CT).

Masks are boolean numpy arrays ``[H, W]`` in the centred k-space layout (DC at
``(H//2, W//2)``), as :mod:`reconstruction.operators` expects. A fully sampled centre (a
``center_fraction`` of each dimension) comes first in every MRI order, filled from DC outwards.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = [
    "angle_subsets",
    "cartesian_lines",
    "extend_angles",
    "extend_mask",
    "mask_ratio",
    "pattern_mask",
    "radial_lines",
    "variable_density",
]

LineKind = Literal["random", "equispaced", "gaussian"]
AngleKind = Literal["uniform", "random"]
#: the named MRI sampling patterns of :func:`pattern_mask` (CLI options and manifests use them)
PATTERNS = ("variable-density", "lines", "lines-equispaced", "lines-gaussian", "radial")
Pattern = Literal["variable-density", "lines", "lines-equispaced", "lines-gaussian", "radial"]
_LINE_KINDS: dict[str, LineKind] = {
    "lines": "random",
    "lines-equispaced": "equispaced",
    "lines-gaussian": "gaussian",
}


def _check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(f"shape must be (H, W) with H, W >= 2, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _first(priority: np.ndarray, count: int) -> np.ndarray:
    """Boolean array, True at the ``count`` smallest priorities (ties broken by position)."""
    flat = priority.ravel()
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:count]] = True
    return keep.reshape(priority.shape)


def _count(ratio: float, total: int) -> int:
    return max(1, min(total, round(_check_ratio(ratio) * total)))


def _centred_coordinates(n: int) -> np.ndarray:
    """Distance of each index from the centre index ``n // 2``."""
    return np.arange(n) - n // 2


def _centre_block(n: int, fraction: float) -> np.ndarray:
    """The ``round(fraction * n)`` indices around the centre index ``n // 2`` (1-D mask)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"center_fraction must be in [0, 1], got {fraction}")
    count = round(fraction * n)
    block = np.zeros(n, dtype=bool)
    start = n // 2 - count // 2
    block[start : start + count] = True
    return block


def _centre_priority(distance: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Priorities below every random one (< 0) for the centre, ordered from DC outwards."""
    scaled = distance / (distance.max() + 1.0)
    return np.where(inside, scaled - 2.0, np.inf)


def mask_ratio(mask: np.ndarray) -> float:
    """Fraction of samples a mask selects."""
    return float(np.count_nonzero(mask)) / mask.size


def variable_density(
    shape: tuple[int, int],
    ratio: float,
    seed: int = 0,
    *,
    decay: float = 2.0,
    center_fraction: float = 0.04,
) -> np.ndarray:
    """2-D random variable-density mask with a polynomial density and a fully sampled centre.

    The density is ``p(k) = (1 - rho(k)) ** decay`` (plus a small floor so that every location
    can be reached), ``rho`` being the elliptical radius normalised to 1 at the corners. A sample
    is kept when ``u / p < c`` for its seeded uniform ``u`` and a threshold ``c`` set by the
    ratio, so inclusion probabilities are ``min(1, c p)``: the classic variable-density
    Bernoulli pattern, but with an exact count and nested across ratios.

    >>> m = variable_density((64, 64), 0.25, seed=1)
    >>> m.shape, m.dtype, mask_ratio(m)
    ((64, 64), dtype('bool'), 0.25)
    >>> bool(np.all(variable_density((64, 64), 0.1, seed=1) <= m))
    True
    """
    h, w = _check_shape(shape)
    ky, kx = np.meshgrid(
        _centred_coordinates(h) / (h / 2), _centred_coordinates(w) / (w / 2), indexing="ij"
    )
    rho = np.hypot(ky, kx) / math.sqrt(2.0)
    density = (1.0 - np.clip(rho, 0.0, 1.0)) ** decay + 1e-3
    rng = np.random.default_rng(seed)
    priority = rng.random((h, w)) / density
    centre = np.outer(_centre_block(h, center_fraction), _centre_block(w, center_fraction))
    priority = np.minimum(priority, _centre_priority(rho, centre))
    return _first(priority, _count(ratio, h * w))


def _line_density(kind: LineKind, n: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    d = _centred_coordinates(n).astype(float)
    u: np.ndarray = rng.random(n)
    if kind == "random":
        return u
    if kind == "gaussian":
        weighted: np.ndarray = u / np.exp(-0.5 * (d / (sigma * n)) ** 2).clip(1e-12)
        return weighted
    if kind == "equispaced":
        # Greedy farthest-point order on a ring: the first m lines are spread evenly for every m
        # (exactly equispaced when n / m is a power of two), and the order is nested.
        return _farthest_point_order(n, start=int(rng.integers(n)), period=n).astype(float)
    raise ValueError(f"unknown line kind {kind!r}: use 'random', 'equispaced' or 'gaussian'")


def _farthest_point_order(n: int, *, start: int, period: float) -> np.ndarray:
    """Rank of each of ``n`` equispaced points on a circle in a greedy farthest-point order."""
    positions = np.arange(n) * (period / n)
    order = _spread(positions, period, [start % n], np.arange(n))
    return _ranks(order, n)


def _ranks(order: list[int], n: int) -> np.ndarray:
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(n)
    return rank


def _spread(positions: np.ndarray, period: float, chosen: list[int], pool: np.ndarray) -> list[int]:
    """``chosen`` followed by the rest of ``pool`` in greedy farthest-point order on a ring of
    length ``period``: each next point is the one farthest from all chosen so far (ties to the
    lowest position in ``pool``). Every prefix is spread evenly: on a continuum its largest gap
    is at most twice its smallest, and on ``2^k`` equispaced points prefixes of ``2^j`` points
    are equispaced."""
    order = list(chosen)
    rest = np.setdiff1d(pool, np.asarray(order, dtype=np.int64))
    if rest.size == 0:
        return order
    gap = np.full(rest.size, np.inf)
    for c in order:
        delta = np.abs(positions[rest] - positions[c]) % period
        gap = np.minimum(gap, np.minimum(delta, period - delta))
    alive = np.ones(rest.size, dtype=bool)
    for _ in range(rest.size):
        pick = int(np.argmax(np.where(alive, gap, -1.0)))
        alive[pick] = False
        order.append(int(rest[pick]))
        delta = np.abs(positions[rest] - positions[rest[pick]]) % period
        gap = np.minimum(gap, np.minimum(delta, period - delta))
    return order


def cartesian_lines(
    shape: tuple[int, int],
    ratio: float,
    seed: int = 0,
    *,
    kind: LineKind = "random",
    center_fraction: float = 0.08,
    axis: int = -1,
    sigma: float = 0.15,
) -> np.ndarray:
    """1-D Cartesian undersampling: whole phase-encoding lines.

    The mask selects lines across ``axis`` (``-1``: columns, i.e. every selected column is fully
    sampled, as fastMRI masks are). ``kind``: ``"random"`` (uniform among the non-centre lines),
    ``"equispaced"`` (evenly spread, quasi-uniform for any count, with a seeded offset),
    ``"gaussian"`` (Gaussian density of the line's distance from DC with standard deviation
    ``sigma`` times the number of lines, like DAGAN's 1-D Gaussian masks). The central
    ``center_fraction`` of the lines is always taken first. The ratio is met to one line.

    >>> m = cartesian_lines((32, 64), 0.25, seed=0)
    >>> int(m.any(axis=0).sum()), bool(np.all(m == m[0]))
    (16, True)
    """
    h, w = _check_shape(shape)
    if axis not in (-1, 0, 1):
        raise ValueError(f"axis must be 0 or -1 (1), got {axis}")
    along_columns = axis != 0
    n = w if along_columns else h
    rng = np.random.default_rng(seed)
    priority = _line_density(kind, n, rng, sigma)
    distance = np.abs(_centred_coordinates(n)).astype(float)
    centre = _centre_block(n, center_fraction)
    priority = np.minimum(priority, _centre_priority(distance, centre))
    lines = _first(priority, _count(ratio, n))
    mask = np.broadcast_to(lines[None, :] if along_columns else lines[:, None], (h, w))
    return np.ascontiguousarray(mask)


def radial_lines(
    shape: tuple[int, int],
    ratio: float | None = None,
    seed: int = 0,
    *,
    spokes: int | None = None,
) -> np.ndarray:
    """Radial pattern: spokes through DC at golden-angle increments (rasterised).

    Give either ``spokes`` (the mask is the union of that many full spokes) or ``ratio`` (the
    mask is filled spoke by spoke, the last spoke from the centre outwards, to the exact count).
    The seed sets the angle of the first spoke; the golden-angle order makes every prefix spread
    evenly and the masks nested.

    >>> m = radial_lines((64, 64), spokes=10)
    >>> bool(m[32, 32]), bool(np.all(radial_lines((64, 64), spokes=5) <= m))
    (True, True)
    """
    h, w = _check_shape(shape)
    if (ratio is None) == (spokes is None):
        raise ValueError("give exactly one of ratio and spokes")
    if spokes is not None and spokes < 1:
        raise ValueError(f"spokes must be >= 1, got {spokes}")
    priority = _radial_priority(h, w, seed)
    if spokes is not None:
        return priority < spokes
    assert ratio is not None
    return _first(priority, _count(ratio, h * w))


def _radial_priority(h: int, w: int, seed: int) -> np.ndarray:
    """Priority of each pixel: index of the first spoke through it + its radius fraction."""
    golden = math.pi * (math.sqrt(5.0) - 1.0) / 2.0  # golden-angle increment on [0, pi)
    start = np.random.default_rng(seed).random() * math.pi
    n_spokes = math.ceil(math.pi * max(h, w))
    radius = math.hypot(h, w) / 2.0
    samples = np.arange(-radius, radius + 0.25, 0.5)
    theta = start + golden * np.arange(n_spokes)
    rows = np.rint(h // 2 + np.outer(np.sin(theta), samples)).astype(np.int64)
    cols = np.rint(w // 2 + np.outer(np.cos(theta), samples)).astype(np.int64)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    key = np.arange(n_spokes)[:, None] + np.abs(samples)[None, :] / (radius + 1.0)
    priority = np.full(h * w, np.inf)
    np.minimum.at(priority, (rows * w + cols)[inside], np.broadcast_to(key, rows.shape)[inside])
    # Pixels no spoke reaches (far corners) come last, nearest first.
    rr, cc = np.meshgrid(_centred_coordinates(h), _centred_coordinates(w), indexing="ij")
    leftover = n_spokes + np.hypot(rr, cc).ravel() / (radius + 1.0)
    return np.where(np.isinf(priority), leftover, priority).reshape(h, w)


def angle_subsets(
    ratio: float,
    seed: int = 0,
    *,
    n_full: int = 720,
    kind: AngleKind = "uniform",
) -> np.ndarray:
    """CT angles (radians, sorted) chosen from a full grid of ``n_full`` angles on ``[0, pi)``.

    ``kind="uniform"`` orders the grid by a greedy farthest-point rule from a seeded start, so
    every prefix is spread evenly (exactly equispaced when ``n_full`` over the count is a power
    of two); ``"random"`` uses a seeded random order. Subsets are nested across ratios.

    >>> a = angle_subsets(0.25, n_full=16, seed=3)
    >>> [round(float(d / np.pi), 3) for d in np.diff(a)]
    [0.25, 0.25, 0.25]
    """
    if n_full < 1:
        raise ValueError(f"n_full must be >= 1, got {n_full}")
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        start = int(rng.integers(n_full))
        priority = _farthest_point_order(n_full, start=start, period=math.pi).astype(float)
    elif kind == "random":
        priority = rng.random(n_full)
    else:
        raise ValueError(f"unknown angle kind {kind!r}: use 'uniform' or 'random'")
    chosen = _first(priority, _count(ratio, n_full))
    angles: np.ndarray = np.arange(n_full)[chosen] * (math.pi / n_full)
    return angles


def extend_angles(angles: np.ndarray, count: int, *, refine: int = 8) -> np.ndarray:
    """Nested supersets and subsets of a given set of CT angles (radians), sorted.

    Subsets (``count`` below the given number) keep the given angles in farthest-point order
    from the first one, so halving an equispaced set gives an equispaced set. Supersets keep
    every given angle and add candidates from a grid that splits each gap between given angles
    into ``refine`` parts, again farthest point first, so doubling an equispaced set gives the
    equispaced set of twice the size. Results for all counts come from one order: nested.
    """
    given = np.mod(np.asarray(angles, dtype=float), np.pi)
    if given.ndim != 1 or given.size == 0 or not np.all(np.isfinite(given)):
        raise ValueError("angles must be a non-empty 1-D array of finite radians")
    given = np.unique(given)
    gaps = np.diff(np.concatenate([given, [given[0] + np.pi]]))
    fractions = np.arange(1, refine) / refine
    extra = np.mod((given[:, None] + gaps[:, None] * fractions[None, :]).ravel(), np.pi)
    candidates = np.concatenate([given, extra])
    if not 1 <= count <= candidates.size:
        raise ValueError(
            f"count must be in [1, {candidates.size}] for refine={refine}, got {count}"
        )
    # Given angles: by decreasing power of two dividing their index (0 first), so that halving
    # an equispaced set keeps every other angle; farthest point first within each level.
    index = np.arange(given.size)
    level = np.full(given.size, 64, dtype=np.int64)
    level[1:] = np.log2(index[1:] & -index[1:]).astype(np.int64)
    order: list[int] = []
    for lev in sorted(set(level.tolist()), reverse=True):
        order = _spread(given, np.pi, order or [0], index[level == lev])
    order = _spread(candidates, np.pi, order, np.arange(candidates.size))
    chosen = candidates[_ranks(order, candidates.size) < count]
    return np.sort(chosen)


def _line_axis(mask: np.ndarray) -> int | None:
    """The axis along which a mask is constant (whole lines), if any."""
    if mask.any(axis=0).sum() < mask.shape[1] and np.all(mask == mask[:1, :]):
        return -1
    if mask.any(axis=1).sum() < mask.shape[0] and np.all(mask == mask[:, :1]):
        return 0
    return None


def extend_mask(
    mask: np.ndarray,
    ratio: float,
    seed: int = 0,
    *,
    bins: int = 16,
) -> np.ndarray:
    """A subset or superset of a given (uploaded) mask at another ratio, same density profile.

    The given mask's sampling density is estimated as a function of the distance from DC
    (``bins`` radial bins; per-line for Cartesian line masks, which stay line masks). Supersets
    keep every given sample and add new ones with that density; subsets keep a fully sampled
    centre block and drop the other samples uniformly at random, which scales the density
    profile down without changing its shape. All ratios come from one order, so results are
    nested, and at the mask's own ratio the mask is returned unchanged.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.dtype != bool:
        raise ValueError(f"mask must be a 2-D boolean array, got {m.dtype} {list(m.shape)}")
    if not m.any():
        raise ValueError("mask selects no sample")
    axis = _line_axis(m)
    if axis is not None:
        lines = m[0, :] if axis == -1 else m[:, 0]
        order = _extension_priority(lines, seed, bins)
        count = _count(ratio, lines.size)
        kept = _first(order, count)
        full = np.broadcast_to(kept[None, :] if axis == -1 else kept[:, None], m.shape)
        return np.ascontiguousarray(full)
    return _first(_extension_priority(m, seed, bins), _count(ratio, m.size))


def _extension_priority(mask: np.ndarray, seed: int, bins: int) -> np.ndarray:
    """Order over all candidates: given samples first (centre block, then random), then new
    samples by ``u / p`` with ``p`` the given mask's radial density."""
    grids = np.meshgrid(
        *[_centred_coordinates(n) / max(n / 2, 1) for n in mask.shape], indexing="ij"
    )
    rho = np.sqrt(sum(g**2 for g in grids)) / math.sqrt(mask.ndim)
    edges = np.linspace(0.0, 1.0 + 1e-9, bins + 1)
    which = np.clip(np.digitize(rho, edges) - 1, 0, bins - 1)
    taken = np.bincount(which.ravel(), weights=mask.ravel().astype(float), minlength=bins)
    total = np.bincount(which.ravel(), minlength=bins).clip(1)
    density = (taken / total)[which] + 1e-3
    rng = np.random.default_rng(seed)
    u = rng.random(mask.shape)
    centre = _fully_sampled_centre(mask)
    given = np.where(centre, -3.0 + rho, -2.0 + 0.999 * u)
    return np.where(mask, given, u / density)


def _fully_sampled_centre(mask: np.ndarray) -> np.ndarray:
    """The largest fully sampled block centred on DC (all False when DC is not sampled)."""
    centre_index = tuple(n // 2 for n in mask.shape)
    block = np.zeros_like(mask)
    if not mask[centre_index]:
        return block
    half = 0
    limit = min(n // 2 for n in mask.shape)
    while half + 1 <= limit:
        sl = tuple(slice(c - half - 1, c + half + 2) for c in centre_index)
        if not mask[sl].all():
            break
        half += 1
    sl = tuple(slice(c - half, c + half + 1) for c in centre_index)
    block[sl] = True
    return block


def pattern_mask(
    pattern: Pattern,
    shape: tuple[int, int],
    ratio: float,
    seed: int = 0,
    *,
    center_fraction: float | None = None,
) -> np.ndarray:
    """A named MRI pattern (one of :data:`PATTERNS`): the one entry point for CLI and manifests.

    ``center_fraction`` overrides the pattern's fully sampled centre (not used by ``radial``).

    >>> mask_ratio(pattern_mask("lines", (32, 32), 0.25, seed=3))
    0.25
    """
    if pattern == "variable-density":
        centre = 0.04 if center_fraction is None else center_fraction
        return variable_density(shape, ratio, seed, center_fraction=centre)
    if pattern == "radial":
        return radial_lines(shape, ratio, seed)
    if pattern in _LINE_KINDS:
        centre = 0.08 if center_fraction is None else center_fraction
        return cartesian_lines(
            shape, ratio, seed, kind=_LINE_KINDS[pattern], center_fraction=centre
        )
    raise ValueError(f"unknown sampling pattern {pattern!r}: use one of {', '.join(PATTERNS)}")
