"""Test 2: small structural changes -- are small details added to the image reconstructed?

The paper's details (the card suits and the text "CAN U SEE IT", rendered from the DejaVu font
that ships with matplotlib) are placed inside the object, away from edges (seeded), at each
height and contrast of the protocol. The network and the baseline reconstruct ``A(x + d)``;
each detail is scored on ``f(A(x + d)) - f(A x)`` against ``d`` (correlation, contrast
recovery, ROI-SSIM: :func:`reconstruction.details.score_detail`).

Verdict (thresholds from the protocol). A detail is *missed* when the baseline shows it
(visible: correlation and contrast recovery at least ``visible_correlation`` and
``visible_recovery``), the network does not, and the network's contrast recovery is below the
baseline's by at least ``margin``. Details are counted per *class* (height and contrast, over
images and shapes), where the paired differences ``recovery(baseline) - recovery(network)``
over the details the baseline shows get a mean and a Student-t ``confidence`` interval:

* ``unstable`` -- in some class the network misses details, its mean recovery is below the
  baseline's by at least ``margin``, and that is confirmed by the interval lying above zero or
  by the network missing every detail of the class the baseline shows (at least two);
* ``inconclusive`` -- such a class confirmed neither way (e.g. the baseline shows one detail
  of it), or the baseline shows none of the details: at this sampling the inverse problem
  itself cannot show them, so the test says nothing about the network;
* ``stable`` -- "no instability found within the protocol's budget" (isolated misses in a
  class whose mean recovery is within ``margin`` of the baseline's are counted and reported).

No correction for the several classes is applied (they are few, and a verdict needs the
margin besides the interval; ``docs/verdicts.md``). The smallest detail height each method
recovers (at least half of the class's details visible) is reported per contrast.
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
    AuditData,
    Subject,
    TestResult,
    Unit,
    Verdict,
    agreed,
    baseline_reconstructor,
    mean_ci,
    measure,
    network_reconstructor,
    seeded,
    to_numpy,
)
from reconstruction.protocols import Protocol, StructuralThresholds

__all__ = ["judge_details", "merge_structural", "run_structural"]


def run_structural(
    subject: Subject,
    truth: Tensor,
    protocol: Protocol,
    *,
    custom: Sequence[tuple[str, np.ndarray]] = (),
    progress: Callable[[int], None] | None = None,
    data: AuditData | None = None,
    unit: Unit | None = None,
) -> TestResult:
    """Run test 2. ``custom``: user-supplied details ``(name, image or mask)``, placed and
    scored like the standard ones at every height and contrast (in a separate pass).
    ``data``: measured k-space (:class:`AuditData`): details are then added to the measured
    data, ``y + A d``. ``unit``: the part of the audit these images are: each image's details
    are placed by its index in the audit (the same placement however the audit is divided),
    and the rows name that index."""
    cfg = protocol.structural
    assert cfg is not None
    first = 0 if unit is None else unit.start
    th = cfg.thresholds
    op = subject.operator
    lo, hi = subject.manifest.intensity_range
    f_net = network_reconstructor(subject, differentiable=False)
    f_base = baseline_reconstructor(op, protocol.baseline, attack=False)
    with torch.no_grad():
        y = measure(op, truth, data)
        plain = {"network": f_net(y), "baseline": f_base(y)}
    images = to_numpy(truth)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    crops: list[dict[str, Any]] = []

    def score(sets: list[list[det.Detail]], contrast: float) -> None:
        """Reconstruct every image with its details added, and score each detail."""
        with_details = np.stack(
            [det.add_details(image, s) for image, s in zip(images, sets, strict=True)]
        )
        x_d = torch.from_numpy(with_details.astype(np.float32)).to(truth.device)
        with torch.no_grad():
            y_d = op.A(x_d) if data is None or data.kspace is None else y + op.A(x_d - truth)
            recon = {"network": f_net(y_d), "baseline": f_base(y_d)}
        for i, placed in enumerate(sets):
            for detail in placed:
                row: dict[str, Any] = {
                    "image": first + i,
                    "class_contrast": contrast,
                    **detail.as_dict(),
                }
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
                crops.append(
                    {
                        "image": first + i,
                        "name": detail.name,
                        "contrast": contrast,
                        "box": det.crop_box(detail, with_details[i].shape[-2:]),
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
                seed=seeded(protocol.seed, 20, c_index, first + i),
                text=cfg.text,
                symbols=cfg.symbols,
            )
            standard.append(placed.details)
            for name, why in placed.skipped.items():
                skipped[f"image {first + i}: {name} (contrast {contrast:g})"] = why
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
                            seed=seeded(protocol.seed, 21, c_index, first + i),
                        )
                    )
                except ValueError as exc:
                    skipped[f"image {first + i}: custom details (contrast {contrast:g})"] = str(exc)
                    extra.append([])
            score(extra, contrast)
        if progress is not None:
            progress(len(cfg.heights_px))
    verdict, reason, judged = judge_details(rows, th)
    numbers: dict[str, Any] = {
        "details": rows,
        "skipped": skipped,
        "font": det.font_path().name,
        "thresholds": th.model_dump(),
        **judged,
    }
    return TestResult("structural", verdict, reason, numbers, {"panels": _panels(rows, crops)})


def _missed(row: dict[str, Any], margin: float) -> bool:
    net, base = row["network"], row["baseline"]
    return bool(
        base["visible"]
        and not net["visible"]
        and base["contrast_recovery"] - net["contrast_recovery"] >= margin
    )


def judge_details(
    rows: list[dict[str, Any]], th: StructuralThresholds
) -> tuple[Verdict, str, dict[str, Any]]:
    """The verdict on scored details, its reason and the numbers behind it.

    ``rows``: one per placed detail with ``image``, ``name``, ``height_px``, ``class_contrast``
    (the protocol's contrast it was placed at) and, for ``network`` and ``baseline``, the scores
    of :func:`reconstruction.details.score_detail` (``contrast_recovery``, ``correlation``,
    ``visible``). Each row gets ``missed`` (whether the network misses it)."""
    for row in rows:
        row["missed"] = _missed(row, th.margin)
    shown_by_baseline = sum(1 for r in rows if r["baseline"]["visible"])
    classes = [_class(rows, key, th) for key in sorted({_key(r) for r in rows})]
    shown = [r for r in rows if r["baseline"]["visible"]]
    numbers: dict[str, Any] = {
        "counts": {
            "details": len(rows),
            "visible_network": sum(1 for r in rows if r["network"]["visible"]),
            "visible_baseline": shown_by_baseline,
            "missed_by_network": sum(1 for r in rows if r["missed"]),
            "missed_per_image": {
                str(i): sum(1 for r in rows if r["image"] == i and r["missed"])
                for i in sorted({r["image"] for r in rows})
            },
        },
        "classes": classes,
        "paired": _paired(shown, th.confidence),
        "smallest_recovered_px": _smallest(classes),
    }
    if not rows:
        return "inconclusive", "no detail could be placed in the images", numbers
    failing = [c for c in classes if c["beyond_margin"]]
    confirmed = [c for c in failing if c["confirmed"]]
    if confirmed:
        worst = max(confirmed, key=lambda c: c["gap"]["mean"])
        return "unstable", _describe(worst, rows, th, len(confirmed), len(classes)), numbers
    if failing:
        worst = max(failing, key=lambda c: c["gap"]["mean"])
        return (
            "inconclusive",
            f"possible loss of details, not confirmed: {_summary(worst, th)}; "
            + (
                "the baseline shows only one detail of this class, which confirms nothing"
                if worst["gap"]["n"] < 2
                else f"the {th.confidence:.0%} confidence interval includes zero and the network "
                "does not miss every detail of the class the baseline shows"
            ),
            numbers,
        )
    if shown_by_baseline == 0:
        return (
            "inconclusive",
            "the baseline shows none of the details at this sampling, so the inverse problem "
            "itself hides them: the test cannot judge the network",
            numbers,
        )
    return "stable", STABLE_WORDING, numbers


def _key(row: dict[str, Any]) -> tuple[int, float]:
    return int(row["height_px"]), float(row["class_contrast"])


def _paired(rows: list[dict[str, Any]], level: float) -> dict[str, Any]:
    """Mean and interval of ``recovery(baseline) - recovery(network)`` over ``rows``."""
    gaps = [
        float(r["baseline"]["contrast_recovery"] - r["network"]["contrast_recovery"]) for r in rows
    ]
    if not gaps:
        return {"n": 0}
    return mean_ci(gaps, level)


def _class(
    rows: list[dict[str, Any]], key: tuple[int, float], th: StructuralThresholds
) -> dict[str, Any]:
    """Counts and the paired comparison for one height and contrast."""
    members = [r for r in rows if _key(r) == key]
    shown = [r for r in members if r["baseline"]["visible"]]
    missed = sum(1 for r in members if r["missed"])
    gap = _paired(shown, th.confidence)
    n = int(gap["n"])
    beyond = bool(missed >= 1 and n >= 1 and gap["mean"] >= th.margin)
    significant = bool(n >= 2 and gap["ci_low"] > 0.0)
    every = bool(n >= 2 and missed == n)
    return {
        "height_px": key[0],
        "contrast": key[1],
        "details": len(members),
        "images": len({r["image"] for r in members}),
        "visible_network": sum(1 for r in members if r["network"]["visible"]),
        "visible_baseline": len(shown),
        "missed": missed,
        "gap": gap,
        "beyond_margin": beyond,
        "significant": significant,
        "every_detail": every,
        "confirmed": beyond and (significant or every),
    }


def _smallest(classes: list[dict[str, Any]]) -> dict[str, dict[str, int | None]]:
    """Per role and contrast: the smallest height at which at least half of the details placed
    are visible (None when no height is)."""
    out: dict[str, dict[str, int | None]] = {}
    for role in ("network", "baseline"):
        per: dict[str, int | None] = {}
        for contrast in sorted({c["contrast"] for c in classes}):
            heights = [
                c["height_px"]
                for c in classes
                if c["contrast"] == contrast and 2 * c[f"visible_{role}"] >= c["details"] > 0
            ]
            per[f"{contrast:g}"] = min(heights) if heights else None
        out[role] = per
    return out


def _summary(c: dict[str, Any], th: StructuralThresholds) -> str:
    gap = c["gap"]
    ci = (
        f" ({th.confidence:.0%} CI [{gap['ci_low']:.2f}, {gap['ci_high']:.2f}])"
        if gap["n"] >= 2
        else ""
    )
    return (
        f"at height {c['height_px']} px and contrast {c['contrast']:g} the network misses "
        f"{c['missed']} of the {c['visible_baseline']} details the baseline shows "
        f"({c['details']} placed over {c['images']} images); the baseline's contrast recovery "
        f"exceeds the network's by {gap['mean']:.2f} on average{ci}, margin {th.margin:g}"
    )


def _describe(
    c: dict[str, Any],
    rows: list[dict[str, Any]],
    th: StructuralThresholds,
    failing: int,
    classes: int,
) -> str:
    members = [r for r in rows if _key(r) == (c["height_px"], c["contrast"]) and r["missed"]]
    worst = min(members, key=lambda r: r["network"]["contrast_recovery"])
    return (
        f"{_summary(c, th)}; {failing} of {classes} detail classes (height, contrast) fail; e.g. "
        f"{worst['name']} in image {worst['image']}: contrast recovery "
        f"{worst['network']['contrast_recovery']:.2f} (baseline "
        f"{worst['baseline']['contrast_recovery']:.2f}), correlation "
        f"{worst['network']['correlation']:.2f} (baseline {worst['baseline']['correlation']:.2f})"
    )


def _rank(row: dict[str, Any], k: int) -> tuple[int, float]:
    """A crop's place in the report: the missed details first (lowest network recovery
    first), then the others in the order they were placed (``k``)."""
    return (0, row["network"]["contrast_recovery"]) if row["missed"] else (1, k)


def _panels(rows: list[dict[str, Any]], crops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to 12 crops for the report, by :func:`_rank`."""
    order = sorted(range(len(rows)), key=lambda k: _rank(rows[k], k))
    return [crops[k] for k in order[:12]]


def merge_structural(
    blocks: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
) -> TestResult:
    """Test 2 over an audit's units (its blocks of results.json, in image order): every scored
    detail (rows name their image's index in the audit), then the classes, the comparisons and
    the verdict drawn from all of them, as for one run over every image. ``figures``: the
    units' crops, ranked again among all the details."""
    font = agreed([b["font"] for b in blocks], "the font")
    thresholds = agreed([b["thresholds"] for b in blocks], "the thresholds")
    th = StructuralThresholds.model_validate(thresholds)
    rows = [{k: v for k, v in row.items() if k != "missed"} for b in blocks for row in b["details"]]
    verdict, reason, judged = judge_details(rows, th)
    numbers: dict[str, Any] = {
        "details": rows,
        "skipped": {k: v for b in blocks for k, v in b["skipped"].items()},
        "font": font,
        "thresholds": thresholds,
        **judged,
    }
    panels = {} if figures is None else {"panels": _merged_panels(figures, rows)}
    return TestResult("structural", verdict, reason, numbers, panels)


def _merged_panels(parts: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[Any]:
    """The report's crops over the units: each unit's (its first by :func:`_rank`) ranked
    again among the merged ``rows`` (judged)."""
    where: dict[tuple[int, str, float], list[int]] = {}
    for k, row in enumerate(rows):
        where.setdefault((row["image"], row["name"], row["class_contrast"]), []).append(k)
    ranked = []
    for part in parts:
        for crop in part.get("panels", []):
            k = where[(crop["image"], crop["name"], crop["contrast"])].pop(0)
            ranked.append((_rank(rows[k], k), k, crop))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [crop for _, _, crop in ranked[:12]]
