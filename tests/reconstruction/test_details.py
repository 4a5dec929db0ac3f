"""Details for the small-structural-changes test: rendering, placement, scoring, crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter, sobel

from reconstruction.data import shepp_logan
from reconstruction.details import (
    DEFAULT_TEXT,
    SYMBOLS,
    Detail,
    add_details,
    crop,
    detail_from_image,
    place_details,
    render_glyphs,
    score_detail,
    score_detail_batch,
    score_details,
    standard_details,
)
from reconstruction.metrics import ssim

RANGE = (0.0, 1.0)


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return shepp_logan(128)


@pytest.fixture(scope="module")
def suits() -> list[tuple[str, np.ndarray]]:
    return [(name, render_glyphs(ch, 10)) for name, ch in SYMBOLS.items()]


def _disc(size: int, radius: float, value: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.where(yy**2 + xx**2 <= radius**2, value, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------ rendering
@pytest.mark.parametrize("height", [6, 12, 24])
@pytest.mark.parametrize("text", [*SYMBOLS.values(), DEFAULT_TEXT])
def test_render_heights_ink_and_antialiasing(text: str, height: int) -> None:
    g = render_glyphs(text, height)
    assert g.dtype == np.float32
    assert abs(g.shape[0] - height) <= 1
    assert g.min() >= 0.0
    assert g.max() <= 1.0
    assert g.max() > 0.9  # solid ink inside the glyph
    assert bool(((g > 0.05) & (g < 0.95)).any())  # anti-aliased edges
    # tight crop: every border row and column holds ink
    assert min(g[0].max(), g[-1].max(), g[:, 0].max(), g[:, -1].max()) > 0.0


def test_render_shapes_and_errors() -> None:
    text = render_glyphs(DEFAULT_TEXT, 10)
    assert text.shape[1] > 6 * text.shape[0]  # a long line of text
    spade = render_glyphs(SYMBOLS["spade"], 16)
    assert 0.5 < spade.shape[1] / spade.shape[0] < 1.2
    with pytest.raises(ValueError, match="U\\+4E2D"):
        render_glyphs("\u4e2d", 10)
    with pytest.raises(ValueError, match="height_px"):
        render_glyphs("A", 1)
    with pytest.raises(ValueError, match="visible character"):
        render_glyphs("  ", 10)


def test_detail_from_image_files_and_arrays(tmp_path: Path) -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 5:55] = True
    from_mask = detail_from_image(mask, 8)
    assert from_mask.shape == (8, 20)
    np.testing.assert_allclose(from_mask, 1.0)
    png = tmp_path / "detail.png"
    Image.fromarray((mask * 255).astype(np.uint8)).save(png)
    np.testing.assert_allclose(detail_from_image(png, 8), from_mask, atol=1e-6)
    npy = tmp_path / "detail.npy"
    np.save(npy, 1.0 - mask.astype(np.float64))  # dark on light
    np.testing.assert_allclose(detail_from_image(npy, 8, invert=True), from_mask, atol=1e-6)
    soft = detail_from_image(render_glyphs(SYMBOLS["heart"], 40), 10)
    assert soft.shape[0] == 10
    assert bool(((soft > 0.05) & (soft < 0.95)).any())
    with pytest.raises(ValueError, match="no ink"):
        detail_from_image(np.zeros((5, 5), dtype=bool), 4)
    with pytest.raises(ValueError, match="constant"):
        detail_from_image(np.full((5, 5), 7.0), 4)
    with pytest.raises(ValueError, match="no such file"):
        detail_from_image(tmp_path / "missing.png", 4)


# ------------------------------------------------------------------------------ placement
def test_placement_inside_the_object_away_from_edges(
    phantom: np.ndarray, suits: list[tuple[str, np.ndarray]]
) -> None:
    margin = 3
    details = place_details(
        phantom, suits, contrast=0.1, intensity_range=RANGE, seed=0, margin=margin
    )
    assert [d.name for d in details] == list(SYMBOLS)
    inside = phantom > 0.05 * (RANGE[1] - RANGE[0])
    gradient = np.hypot(sobel(phantom, axis=0), sobel(phantom, axis=1)) / 8.0
    for d, (_, glyph) in zip(details, suits, strict=True):
        r0, c0, r1, c1 = d.box
        assert (r1 - r0, c1 - c0) == glyph.shape
        assert d.height_px == glyph.shape[0]
        assert d.support.shape == d.pattern.shape == d.coverage.shape == phantom.shape
        assert d.support.any()
        assert bool(inside[d.support].all())
        # the whole box grown by the margin lies in the object
        assert bool(inside[r0 - margin : r1 + margin, c0 - margin : c1 + margin].all())
        # no strong edge (the phantom's edges reach ~0.5 per pixel) under or beside the glyph
        assert gradient[r0 - 1 : r1 + 1, c0 - 1 : c1 + 1].max() < 0.25 * gradient.max()
        outside_box = np.ones(phantom.shape, dtype=bool)
        outside_box[r0:r1, c0:c1] = False
        assert not d.pattern[outside_box].any()
        np.testing.assert_allclose(d.pattern, d.coverage * 0.1, rtol=1e-6)
        np.testing.assert_array_equal(d.support, d.coverage > 0.5)
    # boxes are disjoint, and at least 2 * margin apart
    for i, a in enumerate(details):
        for b in details[i + 1 :]:
            gap_rows = max(b.box[0] - a.box[2], a.box[0] - b.box[2])
            gap_cols = max(b.box[1] - a.box[3], a.box[1] - b.box[3])
            assert max(gap_rows, gap_cols) >= 2 * margin


def test_placement_is_seeded(phantom: np.ndarray, suits: list[tuple[str, np.ndarray]]) -> None:
    def boxes(seed: int) -> list[tuple[int, int, int, int]]:
        placed = place_details(phantom, suits, contrast=0.1, intensity_range=RANGE, seed=seed)
        return [d.box for d in placed]

    assert boxes(3) == boxes(3)
    assert boxes(3) != boxes(4)


def test_contrast_sign_flips_to_stay_in_range() -> None:
    glyph = render_glyphs(SYMBOLS["club"], 10)
    bright = _disc(64, 25, 1.0)  # at the top of the range: a brighter detail would overflow
    (flipped,) = place_details(
        bright, [("club", glyph)], contrast=0.2, intensity_range=RANGE, seed=0
    )
    assert flipped.contrast == pytest.approx(-0.2)
    assert flipped.amplitude == pytest.approx(-0.2)
    x_d = add_details(bright, [flipped])
    assert x_d.min() >= RANGE[0]
    assert x_d.max() <= RANGE[1] + 1e-6
    assert x_d.min() < 0.85  # the detail is there, darker
    dark = _disc(64, 25, 0.1)  # near the bottom: a darker detail would underflow
    (raised,) = place_details(dark, [("club", glyph)], contrast=-0.2, intensity_range=RANGE, seed=0)
    assert raised.contrast == pytest.approx(0.2)
    assert add_details(dark, [raised]).max() <= RANGE[1]
    middle = _disc(64, 25, 0.5)  # room either way: the requested sign is kept
    (kept,) = place_details(middle, [("club", glyph)], contrast=-0.2, intensity_range=RANGE, seed=0)
    assert kept.contrast == pytest.approx(-0.2)
    record = json.loads(json.dumps(kept.as_dict()))
    assert record["name"] == "club"
    assert record["contrast"] == pytest.approx(-0.2)
    assert record["support_pixels"] == int(kept.support.sum())
    assert record["box"] == list(kept.box)


def test_object_too_small_is_a_clear_error() -> None:
    small = _disc(64, 6, 0.5)
    glyph = render_glyphs(SYMBOLS["heart"], 12)
    with pytest.raises(ValueError, match=r"'heart'.*no room for it"):
        place_details(small, [("heart", glyph)], contrast=0.1, intensity_range=RANGE, seed=0)
    with pytest.raises(ValueError, match="larger than the image"):
        place_details(
            np.ones((8, 8)), [("heart", glyph)], contrast=0.1, intensity_range=RANGE, seed=0
        )
    # room for one heart, not for five
    medium = _disc(40, 14, 0.5)
    many = [(f"heart{i}", glyph) for i in range(5)]
    with pytest.raises(ValueError, match="beside the other details"):
        place_details(medium, many, contrast=0.1, intensity_range=RANGE, seed=0, attempts=3)
    with pytest.raises(ValueError, match="unique"):
        place_details(
            medium, [("a", glyph), ("a", glyph)], contrast=0.1, intensity_range=RANGE, seed=0
        )
    with pytest.raises(ValueError, match="contrast"):
        place_details(medium, [("a", glyph)], contrast=0.0, intensity_range=RANGE, seed=0)


def test_standard_details_skip_what_does_not_fit(phantom: np.ndarray) -> None:
    result = standard_details(phantom, heights=[8], contrast=0.1, intensity_range=RANGE, seed=0)
    assert [d.name for d in result.details] == [f"{s}-8px" for s in SYMBOLS]
    assert list(result.skipped) == ["text-8px"]  # 69 px of text: no flat room in 128 px
    assert "no room" in result.skipped["text-8px"]
    assert json.loads(json.dumps(result.as_dict()))["skipped"] == result.skipped
    big = standard_details(
        shepp_logan(256), heights=[10], contrast=0.1, intensity_range=RANGE, seed=1
    )
    assert "text-10px" in [d.name for d in big.details]
    assert not big.skipped


# ------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def scene(phantom: np.ndarray) -> tuple[torch.Tensor, Detail]:
    glyph = render_glyphs(SYMBOLS["spade"], 12)
    (detail,) = place_details(
        phantom, [("spade", glyph)], contrast=0.1, intensity_range=RANGE, seed=0
    )
    return torch.from_numpy(phantom), detail


def test_identity_reconstruction_recovers_the_detail(scene: tuple[torch.Tensor, Detail]) -> None:
    x, detail = scene
    d = torch.from_numpy(detail.pattern)
    scores = score_detail(x + d, x, detail, truth_with_detail=x + d)
    assert scores["correlation"] == pytest.approx(1.0, abs=1e-6)
    assert scores["contrast_recovery"] == pytest.approx(1.0, abs=1e-6)
    assert scores["detail_error"] == pytest.approx(0.0, abs=1e-5)
    assert scores["roi_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["visible"] == 1.0


def test_a_vanished_detail_is_not_visible(scene: tuple[torch.Tensor, Detail]) -> None:
    x, detail = scene
    d = torch.from_numpy(detail.pattern)
    scores = score_detail(x, x, detail, truth_with_detail=x + d)
    assert scores["contrast_recovery"] == 0.0
    assert scores["correlation"] == 0.0
    assert scores["detail_error"] == pytest.approx(1.0)
    assert scores["roi_ssim"] < 0.99
    assert scores["visible"] == 0.0


def test_a_blurred_detail_is_partly_recovered(scene: tuple[torch.Tensor, Detail]) -> None:
    x, detail = scene
    blurred = torch.from_numpy(gaussian_filter(detail.pattern.astype(np.float64), 2.0))
    scores = score_detail(x + blurred, x, detail)
    assert 0.05 < scores["contrast_recovery"] < 0.9
    assert 0.0 < scores["correlation"] < 0.99
    strict = score_detail(x + blurred, x, detail, min_correlation=0.99, min_recovery=0.99)
    assert strict["visible"] == 0.0


def test_scores_of_complex_batched_and_shifted_inputs(scene: tuple[torch.Tensor, Detail]) -> None:
    x, detail = scene
    d = torch.from_numpy(detail.pattern)
    phase = torch.exp(1j * torch.linspace(0.0, 3.0, x.numel()).reshape(x.shape))
    real = score_detail(x + 0.5 * d, x, detail, truth_with_detail=x + d)
    cplx = score_detail(
        ((x + 0.5 * d) * phase)[None], (x * phase)[None], detail, truth_with_detail=(x + d) * phase
    )
    assert cplx.keys() == real.keys()
    for key, value in real.items():
        assert cplx[key] == pytest.approx(value, abs=1e-5)
    assert real["contrast_recovery"] == pytest.approx(0.5, abs=1e-5)
    assert real["correlation"] == pytest.approx(1.0, abs=1e-5)
    batch = score_detail_batch(
        torch.stack([x + d, x, x - d]), torch.stack([x, x, x]), detail, truth_with_detail=x + d
    )
    assert batch["contrast_recovery"].shape == (3,)
    torch.testing.assert_close(
        batch["contrast_recovery"], torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(batch["visible"], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="score_detail_batch"):
        score_detail(torch.stack([x, x]), torch.stack([x, x]), detail)
    with pytest.raises(ValueError, match="shape mismatch"):
        score_detail(x, x[:64], detail)


def test_roi_ssim_is_the_whole_image_map_on_the_region(scene: tuple[torch.Tensor, Detail]) -> None:
    x, detail = scene
    d = torch.from_numpy(detail.pattern)
    noisy = x + d + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    truth = (x + d).double()
    r0, c0, r1, c1 = detail.box
    roi = torch.zeros(x.shape, dtype=torch.bool)
    roi[r0 - 3 : r1 + 3, c0 - 3 : c1 + 3] = True
    expected = float(ssim(noisy.double()[None], truth[None], roi=roi))
    scores = score_detail(noisy, x, detail, truth_with_detail=truth)
    assert scores["roi_ssim"] == pytest.approx(expected, abs=1e-9)
    fixed = score_detail(noisy, x, detail, truth_with_detail=truth, data_range=2.0)
    assert fixed["roi_ssim"] > scores["roi_ssim"]  # a wider range forgives more


def test_score_details_and_crop(phantom: np.ndarray, suits: list[tuple[str, np.ndarray]]) -> None:
    details = place_details(phantom, suits, contrast=0.1, intensity_range=RANGE, seed=2)
    x = torch.from_numpy(phantom)
    x_d = torch.from_numpy(add_details(phantom, details))
    scores = score_details(x_d, x, details)
    assert list(scores) == list(SYMBOLS)
    for value in scores.values():  # disjoint regions: each detail is scored on its own
        assert value["correlation"] == pytest.approx(1.0, abs=1e-5)
        assert value["contrast_recovery"] == pytest.approx(1.0, abs=1e-5)
    detail = details[0]
    r0, c0, r1, c1 = detail.box
    panel = crop(phantom, detail, pad=6)
    assert panel.shape == (r1 - r0 + 12, c1 - c0 + 12)
    np.testing.assert_array_equal(panel, phantom[r0 - 6 : r1 + 6, c0 - 6 : c1 + 6])
    assert crop(np.stack([phantom, phantom]), detail, pad=200).shape == (2, *phantom.shape)
