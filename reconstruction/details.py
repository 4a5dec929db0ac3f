"""Small structural changes: render details, place them inside an object, score their recovery.

The second instability test of Antun et al. (PNAS 2020) adds small details ``d`` to a test image
``x`` (the card suits and the text "CAN U SEE IT") and asks whether a reconstruction
``f(A(x + d))`` still shows them. This module

* renders the details with the DejaVu Sans font bundled with matplotlib (:func:`render_glyphs`),
  or takes a user's detail image (:func:`detail_from_image`), as anti-aliased *coverage* maps in
  ``[0, 1]`` whose ink is ``height_px`` rows high;
* places them, seeded, inside the object and away from its edges (:func:`place_details`,
  :func:`standard_details`), each as a :class:`Detail` whose ``pattern`` is the image-sized ``d``
  (coverage times a signed amplitude, zero outside the detail's box);
* scores a reconstruction by the difference image ``Δ = |f(A(x + d))| - |f(A x)|`` against ``d``
  on the detail's box dilated by a few pixels (:func:`score_detail`).

Conventions: boxes are ``(row0, col0, row1, col1)`` with exclusive ends; ``contrast`` is the
detail's signed amplitude as a fraction of the intensity range ``hi - lo``; complex images are
placed on and scored by their magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction.data import magnitude, read_image
from reconstruction.metrics import ssim

__all__ = [
    "DEFAULT_TEXT",
    "SYMBOLS",
    "Detail",
    "DetailSet",
    "add_details",
    "crop",
    "crop_box",
    "detail_from_image",
    "font_path",
    "place_details",
    "render_glyphs",
    "score_detail",
    "score_detail_batch",
    "score_details",
    "standard_details",
]

#: the four card suits of the paper, by name
SYMBOLS: dict[str, str] = {
    "spade": "\u2660",
    "heart": "\u2665",
    "diamond": "\u2666",
    "club": "\u2663",
}
#: the text detail of the paper
DEFAULT_TEXT = "CAN U SEE IT"
#: the font every detail is rendered with (bundled with matplotlib, so always available offline)
FONT_FAMILY = "DejaVu Sans"

_SUPPORT_LEVEL = 0.5  # coverage above which a pixel belongs to a detail's support
_INK_LEVEL = 1e-3  # coverage above which a pixel of a user's detail image counts as ink
_SSIM_RADIUS = int(3.5 * 1.5 + 0.5)  # half-width of metrics.ssim's default 11x11 window


# ------------------------------------------------------------------------------ rendering
@lru_cache(maxsize=1)
def font_path() -> Path:
    """The DejaVu Sans TTF file shipped inside matplotlib.

    >>> font_path().name
    'DejaVuSans.ttf'
    """
    import matplotlib
    from matplotlib import font_manager

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if bundled.is_file():
        return bundled
    found = Path(font_manager.findfont(FONT_FAMILY, fallback_to_default=False))
    if not found.is_file():  # pragma: no cover - matplotlib always ships DejaVu Sans
        raise FileNotFoundError(f"the {FONT_FAMILY} font is not available from matplotlib")
    return found


def _check_glyphs(text: str) -> None:
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(font_path()))
    missing = sorted({ch for ch in text if not ch.isspace() and font.get_char_index(ord(ch)) == 0})
    if missing:
        listed = ", ".join(f"U+{ord(ch):04X}" for ch in missing)
        raise ValueError(f"{FONT_FAMILY} has no glyph for {listed} in {text!r}")


def _ink(text: str, size: int) -> np.ndarray:
    """``text`` drawn in white on black at font size ``size``, cropped to its ink (uint8)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path()), size)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    pad = 2 + size // 10
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=255)
    array = np.asarray(canvas)
    rows, cols = np.nonzero(array)
    if rows.size == 0:
        raise ValueError(f"{text!r} renders without ink")
    return array[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _resize_to_height(coverage: np.ndarray, height_px: int) -> np.ndarray:
    """Resize a coverage map to ``height_px`` rows (aspect kept): area averaging when shrinking."""
    from PIL import Image

    h, w = coverage.shape
    width = max(1, round(w * height_px / h))
    resample = Image.Resampling.BOX if h >= height_px else Image.Resampling.BILINEAR
    image = Image.fromarray(np.ascontiguousarray(coverage, dtype=np.float32))
    out = np.asarray(image.resize((width, height_px), resample), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def _check_height(height_px: int) -> int:
    if not (isinstance(height_px, int | np.integer) and height_px >= 2):
        raise ValueError(f"height_px must be an integer >= 2, got {height_px!r}")
    return int(height_px)


def render_glyphs(text: str, height_px: int, *, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage ``[h, w]`` (float32 in ``[0, 1]``) of ``text`` in DejaVu Sans.

    The *ink* (not the font size) is ``height_px`` rows high, and the array is cropped tightly
    to it. The text is drawn at ``supersample`` times that height, cropped, then area-averaged
    down, so edges hold fractional coverage.

    >>> spade = render_glyphs(SYMBOLS["spade"], 12)
    >>> spade.shape[0], spade.dtype.name, float(spade.max()) <= 1.0
    (12, 'float32', True)
    """
    height_px = _check_height(height_px)
    if not text or text.isspace():
        raise ValueError("text must contain at least one visible character")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    _check_glyphs(text)
    target = height_px * supersample
    reference = _ink(text, 200)
    size = max(1, round(200 * target / reference.shape[0]))
    ink = _ink(text, size).astype(np.float32) / 255.0
    return _resize_to_height(ink, height_px)


def detail_from_image(
    source: str | Path | np.ndarray, height_px: int, *, invert: bool = False
) -> np.ndarray:
    """A user's detail image or mask as coverage ``[h, w]`` in ``[0, 1]``, ``height_px`` high.

    ``source`` is a file (read with :func:`reconstruction.data.read_image`: PNG, NPY, ...) or a
    2-D array. Boolean masks and arrays already inside ``[0, 1]`` are taken as coverage; other
    arrays are scaled linearly from their minimum (0) to their maximum (1); complex arrays by
    magnitude. ``invert`` turns dark-on-light drawings into coverage (``1 - c``). The result is
    cropped to its ink (coverage above 0.001) and resized to ``height_px`` rows, by area
    averaging when shrinking.

    >>> mask = np.zeros((30, 30), dtype=bool); mask[5:25, 10:20] = True
    >>> detail_from_image(mask, 10).shape
    (10, 5)
    """
    height_px = _check_height(height_px)
    name = str(source) if isinstance(source, str | Path) else "detail array"
    raw = read_image(source).array if isinstance(source, str | Path) else np.asarray(source)
    if raw.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D detail image, got shape {raw.shape}")
    a = magnitude(raw)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: the detail image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if raw.dtype != bool and not (lo >= 0.0 and hi <= 1.0):
        if hi == lo:
            raise ValueError(f"{name}: the detail image is constant")
        a = (a - lo) / (hi - lo)
    if invert:
        a = 1.0 - a
    rows, cols = np.nonzero(a > _INK_LEVEL)
    if rows.size == 0:
        raise ValueError(f"{name}: the detail image has no ink (all coverage is 0)")
    a = a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return _resize_to_height(a, height_px)


# ------------------------------------------------------------------------------ details
@dataclass(frozen=True, eq=False)
class Detail:
    """A detail placed in an image: where it is and the pattern ``d`` added to the image.

    All arrays have the image's shape ``[H, W]`` (treat them as read-only). ``coverage`` is the soft
    (anti-aliased) coverage in ``[0, 1]``, ``support`` is ``coverage > 0.5``, and ``pattern`` is
    ``coverage * amplitude`` (float32, zero outside ``box``) with
    ``amplitude = contrast * (hi - lo)``; ``contrast`` is signed, negative when the detail darkens
    the image. Details compare by identity (the arrays make value equality ambiguous).
    """

    name: str
    support: np.ndarray
    coverage: np.ndarray
    pattern: np.ndarray
    box: tuple[int, int, int, int]
    height_px: int
    contrast: float
    amplitude: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "name": self.name,
            "box": list(self.box),
            "height_px": self.height_px,
            "contrast": self.contrast,
            "amplitude": self.amplitude,
            "support_pixels": int(self.support.sum()),
        }


@dataclass(frozen=True)
class DetailSet:
    """What :func:`standard_details` placed, and what it skipped with the reason (name -> why)."""

    details: list[Detail]
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "details": [d.as_dict() for d in self.details],
            "skipped": dict(self.skipped),
        }


class _NoRoom(ValueError):
    """A glyph has no free position; ``alone`` says whether even an empty object lacks room."""

    def __init__(self, message: str, *, alone: bool) -> None:
        self.alone = alone
        super().__init__(message)


def _window_sum(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of ``a`` over every ``h x w`` window, indexed by the window's top-left corner."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    s[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    out: np.ndarray = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
    return out


def _window_max(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Maxima of ``a`` over every ``h x w`` window, indexed by the window's top-left corner."""
    from scipy.ndimage import maximum_filter

    full = maximum_filter(a, size=(h, w), mode="nearest")
    out: np.ndarray = full[
        h // 2 : h // 2 + a.shape[0] - h + 1, w // 2 : w // 2 + a.shape[1] - w + 1
    ]
    return out


class _Placer:
    """Seeded placement of glyphs, one after another, into one image (state: occupied pixels)."""

    def __init__(
        self,
        image: np.ndarray,
        *,
        contrast: float,
        intensity_range: tuple[float, float],
        rng: np.random.Generator,
        margin: int,
        object_threshold: float,
        flat_quantile: float,
    ) -> None:
        from scipy.ndimage import sobel

        a = np.asarray(image)
        if a.ndim != 2:
            raise ValueError(f"expected a 2-D image [H, W], got shape {a.shape}")
        self.image = magnitude(a)
        lo, hi = (float(v) for v in intensity_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"intensity_range must have lo < hi, got {intensity_range!r}")
        if not (math.isfinite(contrast) and 0.0 < abs(contrast) <= 1.0):
            raise ValueError(f"contrast must be nonzero with |contrast| <= 1, got {contrast!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if not 0.0 < flat_quantile <= 1.0:
            raise ValueError(f"flat_quantile must be in (0, 1], got {flat_quantile}")
        self.lo, self.hi, self.contrast = lo, hi, float(contrast)
        self.rng, self.margin, self.flat_quantile = rng, int(margin), flat_quantile
        self.outside = (self.image <= lo + object_threshold * (hi - lo)).astype(np.float64)
        self.gradient = np.hypot(sobel(self.image, axis=0), sobel(self.image, axis=1)) / 8.0
        self.occupied = np.zeros(self.image.shape, dtype=np.float64)

    def _free(self, h: int, w: int, *, alone: bool) -> np.ndarray:
        """Window top-lefts whose ``(h, w)`` window lies in the object (and off other details)."""
        if h > self.image.shape[0] or w > self.image.shape[1]:
            return np.zeros((0, 0), dtype=bool)
        blocked = self.outside if alone else self.outside + self.occupied
        free: np.ndarray = _window_sum(blocked, h, w) < 0.5
        return free

    def fits_alone(self, glyph_shape: tuple[int, ...]) -> bool:
        """Whether a glyph of this shape has room in the empty object."""
        h, w = glyph_shape[0] + 2 * self.margin, glyph_shape[1] + 2 * self.margin
        return bool(self._free(h, w, alone=True).any())

    def place(self, name: str, glyph: np.ndarray, height_px: int) -> Detail:
        coverage = np.clip(np.asarray(glyph, dtype=np.float32), 0.0, 1.0)
        if coverage.ndim != 2 or coverage.size == 0:
            raise ValueError(f"detail {name!r}: expected a non-empty 2-D coverage array")
        gh, gw = coverage.shape
        m = self.margin
        big_h, big_w = gh + 2 * m, gw + 2 * m
        rows, cols = self.image.shape[0], self.image.shape[1]
        what = f"detail {name!r} ({gh}x{gw} px with a {m}-pixel margin)"
        if big_h > rows or big_w > cols:
            raise _NoRoom(f"cannot place {what}: it is larger than the image", alone=True)
        free = self._free(big_h, big_w, alone=False)
        if not free.any():
            alone = not self.fits_alone(coverage.shape)
            why = (
                "the object has no room for it; use a smaller height or a larger image"
                if alone
                else "no free position is left beside the other details"
            )
            raise _NoRoom(f"cannot place {what}: {why}", alone=alone)
        flatness = _window_max(self.gradient, big_h, big_w)
        threshold = np.quantile(flatness[free], self.flat_quantile)
        candidates = np.flatnonzero(free & (flatness <= threshold))
        pick = int(candidates[self.rng.integers(candidates.size)])
        r0, c0 = pick // free.shape[1] + m, pick % free.shape[1] + m
        box = (r0, c0, r0 + gh, c0 + gw)
        self.occupied[r0 - m : r0 + gh + m, c0 - m : c0 + gw + m] = 1.0
        sign = self._sign(self.image[r0 : r0 + gh, c0 : c0 + gw], coverage)
        contrast = sign * self.contrast
        full_cov = np.zeros(self.image.shape, dtype=np.float32)
        full_cov[r0 : r0 + gh, c0 : c0 + gw] = coverage
        pattern = (full_cov * np.float32(contrast * (self.hi - self.lo))).astype(np.float32)
        support = full_cov > _SUPPORT_LEVEL
        amplitude = contrast * (self.hi - self.lo)
        return Detail(name, support, full_cov, pattern, box, height_px, contrast, amplitude)

    def _sign(self, region: np.ndarray, coverage: np.ndarray) -> float:
        """+1 to keep the requested sign, -1 to flip it: keeps ``x + d`` inside the range."""
        amplitude = self.contrast * (self.hi - self.lo)
        tolerance = 1e-6 * (self.hi - self.lo)

        def overshoot(a: float) -> float:
            values = region + a * coverage
            return max(float(values.max()) - self.hi, 0.0) + max(self.lo - float(values.min()), 0.0)

        kept, flipped = overshoot(amplitude), overshoot(-amplitude)
        return -1.0 if kept > tolerance and flipped < kept else 1.0


def _check_names(glyphs: Sequence[tuple[str, np.ndarray]]) -> None:
    names = [name for name, _ in glyphs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"detail names must be unique, repeated: {', '.join(duplicates)}")


def _order(glyphs: Sequence[tuple[str, np.ndarray]]) -> list[int]:
    """Placement order: largest box first (first-fit decreasing), input order on ties."""
    return sorted(range(len(glyphs)), key=lambda i: -np.asarray(glyphs[i][1]).size)


def place_details(
    image: np.ndarray,
    glyphs: Sequence[tuple[str, np.ndarray]],
    *,
    contrast: float,
    intensity_range: tuple[float, float],
    seed: int,
    margin: int = 3,
    object_threshold: float = 0.05,
    flat_quantile: float = 0.25,
    attempts: int = 20,
) -> list[Detail]:
    """Place named glyph coverages inside the object of ``image``, away from edges, seeded.

    A glyph's box, grown by ``margin`` pixels on every side, must lie inside the object (pixels
    above ``lo + object_threshold * (hi - lo)``) and must not touch another detail's grown box
    (so boxes are at least ``2 * margin`` apart). Among those positions, one is drawn uniformly
    from the flattest ``flat_quantile`` of them (ranked by the largest Sobel gradient magnitude
    in the grown box). Glyphs are placed largest first; when a later glyph finds no room, the
    whole arrangement is redrawn, up to ``attempts`` times. The amplitude is
    ``contrast * (hi - lo)``; its sign flips when that keeps ``x + d`` inside the range better
    (``Detail.contrast`` records the sign used). Complex images are placed by magnitude.

    Returns the details in the order of ``glyphs``; ``height_px`` is each glyph's row count.
    Raises ``ValueError`` naming the glyph when one cannot be placed.

    >>> from reconstruction.data import shepp_logan
    >>> phantom = shepp_logan(64)
    >>> square = np.ones((5, 5), dtype=np.float32)
    >>> [d.box for d in place_details(phantom, [("square", square)], contrast=0.1,
    ...  intensity_range=(0.0, 1.0), seed=0)] == [
    ...  d.box for d in place_details(phantom, [("square", square)], contrast=0.1,
    ...  intensity_range=(0.0, 1.0), seed=0)]
    True
    """
    _check_names(glyphs)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    rng = np.random.default_rng(seed)
    order = _order(glyphs)
    last: _NoRoom | None = None
    for _ in range(attempts):
        placer = _Placer(
            image,
            contrast=contrast,
            intensity_range=intensity_range,
            rng=rng,
            margin=margin,
            object_threshold=object_threshold,
            flat_quantile=flat_quantile,
        )
        placed: dict[int, Detail] = {}
        try:
            for i in order:
                name, glyph = glyphs[i]
                placed[i] = placer.place(name, glyph, int(np.asarray(glyph).shape[0]))
        except _NoRoom as exc:
            if exc.alone:
                raise ValueError(str(exc)) from None
            last = exc
            continue
        return [placed[i] for i in range(len(glyphs))]
    raise ValueError(f"{last} (tried {attempts} arrangements)")


def standard_details(
    image: np.ndarray,
    *,
    heights: Sequence[int],
    contrast: float,
    intensity_range: tuple[float, float],
    seed: int,
    text: str | None = DEFAULT_TEXT,
    symbols: bool = True,
    margin: int = 3,
    object_threshold: float = 0.05,
    flat_quantile: float = 0.25,
    attempts: int = 20,
) -> DetailSet:
    """The paper's details (four card suits and ``text``) at each height, placed in ``image``.

    Names are ``"<suit>-<h>px"`` and ``"text-<h>px"``. Placement follows :func:`place_details`;
    what does not fit is *skipped*, not an error: :attr:`DetailSet.skipped` maps each skipped
    name to the reason. Of ``attempts`` seeded arrangements the first that places everything is
    kept, else the one that places the most. ``DetailSet.details`` is ordered by height as given
    and, within a height, spade, heart, diamond, club, then the text.

    >>> from reconstruction.data import shepp_logan
    >>> result = standard_details(shepp_logan(128), heights=[8], contrast=0.1,
    ...                           intensity_range=(0.0, 1.0), seed=0)
    >>> [d.name for d in result.details][:4]
    ['spade-8px', 'heart-8px', 'diamond-8px', 'club-8px']
    """
    glyphs: list[tuple[str, np.ndarray]] = []
    for h in heights:
        if symbols:
            glyphs += [(f"{key}-{h}px", render_glyphs(ch, h)) for key, ch in SYMBOLS.items()]
        if text is not None and text.strip():
            glyphs.append((f"text-{h}px", render_glyphs(text, h)))
    _check_names(glyphs)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    rng = np.random.default_rng(seed)

    def placer() -> _Placer:
        return _Placer(
            image,
            contrast=contrast,
            intensity_range=intensity_range,
            rng=rng,
            margin=margin,
            object_threshold=object_threshold,
            flat_quantile=flat_quantile,
        )

    # glyphs with no room even in the empty object are skipped once, before any arrangement
    skipped: dict[str, str] = {}
    probe = placer()
    for name, glyph in glyphs:
        if not probe.fits_alone(glyph.shape):
            skipped[name] = (
                f"cannot place detail {name!r} ({glyph.shape[0]}x{glyph.shape[1]} px with a "
                f"{margin}-pixel margin): the object has no room for it"
            )
    candidates = [g for g in glyphs if g[0] not in skipped]
    order = _order(candidates)
    best: tuple[dict[int, Detail], dict[str, str]] | None = None
    for _ in range(attempts):
        current = placer()
        placed: dict[int, Detail] = {}
        failed: dict[str, str] = {}
        for i in order:
            name, glyph = candidates[i]
            try:
                placed[i] = current.place(name, glyph, glyph.shape[0])
            except _NoRoom as exc:
                failed[name] = f"{exc} (tried {attempts} arrangements)"
        if best is None or len(placed) > len(best[0]):
            best = (placed, failed)
        if not failed:
            break
    assert best is not None
    details = [best[0][i] for i in range(len(candidates)) if i in best[0]]
    skipped.update(best[1])
    order_of = {name: k for k, (name, _) in enumerate(glyphs)}
    return DetailSet(details, dict(sorted(skipped.items(), key=lambda kv: order_of[kv[0]])))


def add_details(image: np.ndarray, details: Sequence[Detail]) -> np.ndarray:
    """``x + d`` for all ``details``; complex images get ``d`` along their phase.

    >>> x = np.zeros((8, 8), dtype=np.float32)
    >>> float(add_details(x, []).sum())
    0.0
    """
    a = np.asarray(image)
    total = np.zeros(a.shape, dtype=np.float32)
    for detail in details:
        if detail.pattern.shape != a.shape:
            raise ValueError(
                f"detail {detail.name!r} is for images {detail.pattern.shape}, not {a.shape}"
            )
        total += detail.pattern
    out: np.ndarray
    if np.iscomplexobj(a):
        out = (a + total * np.exp(1j * np.angle(a))).astype(a.dtype)
    else:
        out = (a + total).astype(np.result_type(a.dtype, np.float32))
    return out


# ------------------------------------------------------------------------------ scoring
def _magnitude(t: Tensor) -> Tensor:
    return t.abs() if t.is_complex() else t


def _region(detail: Detail, pad: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    r0, c0, r1, c1 = detail.box
    return (
        slice(max(r0 - pad, 0), min(r1 + pad, shape[0])),
        slice(max(c0 - pad, 0), min(c1 + pad, shape[1])),
    )


def _batched(t: Tensor, what: str) -> Tensor:
    if t.ndim == 2:
        return t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"{what}: expected [H, W] or [B, H, W], got {list(t.shape)}")
    return t


def score_detail_batch(
    with_detail: Tensor,
    without_detail: Tensor,
    detail: Detail,
    *,
    truth_with_detail: Tensor | None = None,
    pad: int = 3,
    min_correlation: float = 0.5,
    min_recovery: float = 0.5,
    data_range: float | None = None,
) -> dict[str, Tensor]:
    """Per-image scores ``[B]`` of :func:`score_detail` for batches ``[B, H, W]`` (or ``[H, W]``).

    ``truth_with_detail`` may be one image ``[H, W]`` for the whole batch.
    """
    if with_detail.shape != without_detail.shape:
        raise ValueError(
            f"shape mismatch: {list(with_detail.shape)} vs {list(without_detail.shape)}"
        )
    y1 = _batched(_magnitude(with_detail), "with_detail").to(torch.float64)
    y0 = _batched(_magnitude(without_detail), "without_detail").to(torch.float64)
    shape = (int(y1.shape[-2]), int(y1.shape[-1]))
    if detail.pattern.shape != shape:
        raise ValueError(
            f"detail {detail.name!r} is for images {detail.pattern.shape}, not {shape}"
        )
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    rows, cols = _region(detail, pad, shape)
    d = torch.from_numpy(np.array(detail.pattern[rows, cols], dtype=np.float64)).to(y1.device)
    delta = (y1[:, rows, cols] - y0[:, rows, cols]).flatten(1)
    d = d.flatten()
    dd = torch.dot(d, d)
    recovery = (delta @ d) / dd
    error = torch.sqrt(((delta - d) ** 2).sum(dim=1) / dd)
    dc = d - d.mean()
    delta_c = delta - delta.mean(dim=1, keepdim=True)
    norm = torch.sqrt((delta_c**2).sum(dim=1) * torch.dot(dc, dc))
    correlation = torch.where(
        norm > 0, (delta_c @ dc) / torch.where(norm > 0, norm, 1.0), torch.zeros_like(norm)
    )
    visible = ((correlation >= min_correlation) & (recovery >= min_recovery)).to(torch.float64)
    scores = {
        "correlation": correlation,
        "contrast_recovery": recovery,
        "detail_error": error,
        "visible": visible,
    }
    if truth_with_detail is not None:
        scores["roi_ssim"] = _roi_ssim(y1, truth_with_detail, rows, cols, data_range)
    return scores


def _roi_ssim(
    y: Tensor, truth: Tensor, rows: slice, cols: slice, data_range: float | None
) -> Tensor:
    """SSIM on the detail's region, equal to the whole-image SSIM map averaged over it."""
    ref = _batched(_magnitude(truth), "truth_with_detail").to(device=y.device, dtype=y.dtype)
    if ref.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"truth_with_detail {list(truth.shape)} does not match {list(y.shape)}")
    ref = ref.expand_as(y)
    if data_range is None:
        flat = ref.flatten(1)
        peak: Tensor | float = flat.amax(dim=1) - flat.amin(dim=1)
    else:
        peak = float(data_range)
    h, w = y.shape[-2:]
    r0, r1 = max(rows.start - _SSIM_RADIUS, 0), min(rows.stop + _SSIM_RADIUS, h)
    c0, c1 = max(cols.start - _SSIM_RADIUS, 0), min(cols.stop + _SSIM_RADIUS, w)
    roi = torch.zeros((r1 - r0, c1 - c0), dtype=torch.bool, device=y.device)
    roi[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0] = True
    try:
        return ssim(y[:, r0:r1, c0:c1], ref[:, r0:r1, c0:c1], data_range=peak, roi=roi)
    except ValueError:  # the region lies within the window's half-width of the image border
        return torch.full((y.shape[0],), math.nan, dtype=y.dtype, device=y.device)


def score_detail(
    with_detail: Tensor,
    without_detail: Tensor,
    detail: Detail,
    *,
    truth_with_detail: Tensor | None = None,
    pad: int = 3,
    min_correlation: float = 0.5,
    min_recovery: float = 0.5,
    data_range: float | None = None,
) -> dict[str, float]:
    """How well a reconstruction shows ``detail``: scores of ``Δ = |with| - |without|`` vs ``d``.

    ``with_detail`` is ``f(A(x + d))`` and ``without_detail`` is ``f(A x)``, each ``[H, W]`` or
    ``[1, H, W]`` (use :func:`score_detail_batch` for larger batches); complex images are
    compared by magnitude. The region is the detail's box dilated by ``pad`` pixels (clipped to
    the image). Returns

    * ``correlation``: Pearson correlation of ``Δ`` and ``d`` on the region (0 when ``Δ`` is
      constant there);
    * ``contrast_recovery``: ``<Δ, d> / <d, d>`` on the region (1 fully recovered, 0 vanished,
      negative when inverted);
    * ``detail_error``: ``||Δ - d|| / ||d||`` on the region;
    * ``visible``: 1.0 when ``correlation >= min_correlation`` and
      ``contrast_recovery >= min_recovery``, else 0.0;
    * ``roi_ssim`` (only with ``truth_with_detail`` = ``x + d``): SSIM of ``with_detail``
      against it, averaged over the region, with the :func:`reconstruction.metrics.ssim`
      window. It is computed on a crop grown by the window's half-width (5 pixels), so it
      equals the whole-image SSIM map averaged over the region, and crops smaller than the
      window never arise; it is NaN when the whole region lies within 5 pixels of the image
      border. ``data_range`` defaults to the whole reference's dynamic range (pass the
      intensity range's width to use that instead).

    >>> x = torch.zeros(32, 32)
    >>> detail = place_details(np.full((32, 32), 0.5), [("dot", np.ones((4, 4)))], contrast=0.2,
    ...                        intensity_range=(0.0, 1.0), seed=0)[0]
    >>> d = torch.from_numpy(detail.pattern)
    >>> {k: round(v, 3) for k, v in score_detail(x + d, x, detail).items()}
    {'correlation': 1.0, 'contrast_recovery': 1.0, 'detail_error': 0.0, 'visible': 1.0}
    """
    if with_detail.ndim == 3 and with_detail.shape[0] != 1:
        raise ValueError(
            f"score_detail takes one image, got a batch of {with_detail.shape[0]}; "
            "use score_detail_batch"
        )
    scores = score_detail_batch(
        with_detail,
        without_detail,
        detail,
        truth_with_detail=truth_with_detail,
        pad=pad,
        min_correlation=min_correlation,
        min_recovery=min_recovery,
        data_range=data_range,
    )
    return {key: float(value[0]) for key, value in scores.items()}


def score_details(
    with_details: Tensor,
    without_details: Tensor,
    details: Sequence[Detail],
    *,
    truth_with_details: Tensor | None = None,
    pad: int = 3,
    min_correlation: float = 0.5,
    min_recovery: float = 0.5,
    data_range: float | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`score_detail` for several details added together (name -> scores).

    Details from one :func:`place_details` call are at least ``2 * margin`` pixels apart, so
    with ``pad <= margin`` their regions are disjoint and each is scored on its own.
    """
    return {
        detail.name: score_detail(
            with_details,
            without_details,
            detail,
            truth_with_detail=truth_with_details,
            pad=pad,
            min_correlation=min_correlation,
            min_recovery=min_recovery,
            data_range=data_range,
        )
        for detail in details
    }


# ------------------------------------------------------------------------------ panels
def crop(image: np.ndarray, detail: Detail, pad: int = 6) -> np.ndarray:
    """A copy of ``image[..., H, W]`` around ``detail``'s box grown by ``pad`` (clipped).

    >>> x = np.arange(100.0).reshape(10, 10)
    >>> d = Detail("dot", np.zeros((10, 10), bool), np.zeros((10, 10), np.float32),
    ...            np.zeros((10, 10), np.float32), (4, 4, 6, 6), 2, 0.1, 0.1)
    >>> crop(x, d, pad=1).shape, crop(x, d, pad=9).shape
    ((4, 4), (10, 10))
    """
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"expected an image [..., H, W], got shape {a.shape}")
    rows, cols = _region(detail, pad, (a.shape[-2], a.shape[-1]))
    return np.array(a[..., rows, cols], copy=True)


def crop_box(detail: Detail, shape: tuple[int, int], pad: int = 6) -> tuple[int, int, int, int]:
    """``detail``'s box in the coordinates of :func:`crop` (same ``pad``) of an image of
    ``shape`` ``(H, W)``: where to draw the box on the crop.

    >>> d = Detail("dot", np.zeros((10, 10), bool), np.zeros((10, 10), np.float32),
    ...            np.zeros((10, 10), np.float32), (4, 4, 6, 6), 2, 0.1, 0.1)
    >>> crop_box(d, (10, 10), pad=1), crop_box(d, (10, 10), pad=9)
    ((1, 1, 3, 3), (4, 4, 6, 6))
    """
    rows, cols = _region(detail, pad, shape)
    r0, c0, r1, c1 = detail.box
    return (r0 - rows.start, c0 - cols.start, r1 - rows.start, c1 - cols.start)
