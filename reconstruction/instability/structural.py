"""Test 2: small structural changes -- are small details added to the image reconstructed?

The paper's details (the card suits and the text "CAN U SEE IT", rendered from the DejaVu font
that ships with matplotlib) are placed inside the object, away from edges (seeded), at each
height and contrast of the protocol. The network and the baseline reconstruct ``A(x + d)``;
each detail is scored on ``f(A(x + d)) - f(A x)`` against ``d`` (correlation, contrast
recovery, ROI-SSIM: :func:`reconstruction.details.score_detail`).

Verdict (thresholds from the protocol):

* ``unstable`` -- some detail the baseline shows is not visible in the network's output, and
  the network's contrast recovery is below the baseline's by at least ``margin``;
* ``inconclusive`` -- the baseline shows none of the details: at this sampling the inverse
  problem itself cannot show them, so the test says nothing about the network;
* ``stable`` -- "no instability found within the protocol's budget".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction import details as det
from reconstruction.instability.common import (
    STABLE_WORDING,
    Subject,
    TestResult,
    baseline_reconstructor,
    network_reconstructor,
    seeded,
    to_numpy,
)
from reconstruction.protocols import Protocol

__all__ = ["run_structural"]


def run_structural(
    subject: Subject,
    truth: Tensor,
    protocol: Protocol,
    *,
    custom: Sequence[tuple[str, np.ndarray]] = (),
    progress: Callable[[int], None] | None = None,
) -> TestResult:
    """Run test 2. ``custom``: user-supplied details ``(name, image or mask)``, placed and
    scored like the standard ones at every height and contrast (in a separate pass)."""
    cfg = protocol.structural
    assert cfg is not None
    th = cfg.thresholds
    op = subject.operator
    lo, hi = subject.manifest.intensity_range
    f_net = network_reconstructor(subject, differentiable=False)
    f_base = baseline_reconstructor(op, protocol.baseline, attack=False)
    with torch.no_grad():
        y = op.A(truth)
        plain = {"network": f_net(y), "baseline": f_base(y)}
    images = to_numpy(truth)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    panels: list[dict[str, Any]] = []

    def score(sets: list[list[det.Detail]], contrast: float) -> None:
        """Reconstruct every image with its details added, and score each detail."""
        with_details = np.stack(
            [det.add_details(image, s) for image, s in zip(images, sets, strict=True)]
        )
        x_d = torch.from_numpy(with_details.astype(np.float32)).to(truth.device)
        with torch.no_grad():
            y_d = op.A(x_d)
            recon = {"network": f_net(y_d), "baseline": f_base(y_d)}
        for i, placed in enumerate(sets):
            for detail in placed:
                row: dict[str, Any] = {"image": i, **detail.as_dict()}
                for role in ("network", "baseline"):
                    row[role] = det.score_detail(
                        recon[role][i],
                        plain[role][i],
                        detail,
                        truth_with_detail=x_d[i],
                        min_correlation=th.visible_correlation,
                        min_recovery=th.visible_recovery,
                        data_range=hi - lo,
                    )
                rows.append(row)
                if len(panels) < 12 and i == 0:
                    panels.append(
                        {
                            "name": detail.name,
                            "contrast": contrast,
                            "truth": det.crop(with_details[i], detail),
                            "network": det.crop(to_numpy(recon["network"][i]), detail),
                            "baseline": det.crop(to_numpy(recon["baseline"][i]), detail),
                        }
                    )

    for c_index, contrast in enumerate(cfg.contrasts):
        standard = []
        for i, image in enumerate(images):
            placed = det.standard_details(
                image,
                heights=cfg.heights_px,
                contrast=contrast,
                intensity_range=(lo, hi),
                seed=seeded(protocol.seed, 20, c_index, i),
                text=cfg.text,
                symbols=cfg.symbols,
            )
            standard.append(placed.details)
            for name, why in placed.skipped.items():
                skipped[f"image {i}: {name} (contrast {contrast:g})"] = why
        score(standard, contrast)
        if custom:
            extra: list[list[det.Detail]] = []
            for i, image in enumerate(images):
                glyphs = [
                    (f"{name}-{h}px", det.detail_from_image(coverage, h))
                    for name, coverage in custom
                    for h in cfg.heights_px
                ]
                try:
                    extra.append(
                        det.place_details(
                            image,
                            glyphs,
                            contrast=contrast,
                            intensity_range=(lo, hi),
                            seed=seeded(protocol.seed, 21, c_index, i),
                        )
                    )
                except ValueError as exc:
                    skipped[f"image {i}: custom details (contrast {contrast:g})"] = str(exc)
                    extra.append([])
            score(extra, contrast)
        if progress is not None:
            progress(len(cfg.heights_px))
    misses = [
        r
        for r in rows
        if r["baseline"]["visible"]
        and not r["network"]["visible"]
        and r["baseline"]["contrast_recovery"] - r["network"]["contrast_recovery"] >= th.margin
    ]
    shown_by_baseline = sum(1 for r in rows if r["baseline"]["visible"])
    numbers: dict[str, Any] = {
        "details": rows,
        "skipped": skipped,
        "font": det.font_path().name,
        "counts": {
            "details": len(rows),
            "visible_network": sum(1 for r in rows if r["network"]["visible"]),
            "visible_baseline": shown_by_baseline,
            "missed_by_network": len(misses),
        },
        "thresholds": th.model_dump(),
    }
    figures = {"panels": panels}
    if not rows:
        return TestResult(
            "structural", "inconclusive", "no detail could be placed in the images", numbers
        )
    if misses:
        worst = min(misses, key=lambda r: r["network"]["contrast_recovery"])
        reason = (
            f"{len(misses)} of {shown_by_baseline} details the baseline shows are not visible in "
            f"the network's output; e.g. {worst['name']} at contrast {worst['contrast']:g} in "
            f"image {worst['image']}: contrast recovery {worst['network']['contrast_recovery']:.2f}"
            f" (baseline {worst['baseline']['contrast_recovery']:.2f}), correlation "
            f"{worst['network']['correlation']:.2f} (baseline "
            f"{worst['baseline']['correlation']:.2f})"
        )
        return TestResult("structural", "unstable", reason, numbers, figures)
    if shown_by_baseline == 0:
        return TestResult(
            "structural",
            "inconclusive",
            "the baseline shows none of the details at this sampling, so the inverse problem "
            "itself hides them: the test cannot judge the network",
            numbers,
            figures,
        )
    return TestResult("structural", "stable", STABLE_WORDING, numbers, figures)
