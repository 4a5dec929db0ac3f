"""Audit reports: results.json, PNG figures, an HTML report and its PDF (WeasyPrint).

:func:`write_report` renders a :class:`~reconstruction.suite.SuiteResult`:

* ``results.json`` -- ``result.to_json()`` (schema ``recon-audit/results/v1``);
* ``figures/*.png`` -- :func:`write_figures` (matplotlib ``Figure`` objects on the Agg canvas,
  no pyplot state; fixed dpi; one intensity window for every image of a run);
* ``report.html`` -- :func:`render_html` from ``templates/report.html.j2`` (Jinja2, autoescaped),
  which needs only the results.json document, the figure paths and the protocol's YAML;
* ``report.pdf`` -- the same HTML through WeasyPrint (A4, no network access).

The report is a certificate: :class:`Certificate` (its id, issue time, service version and git
revision, the submitted manifest) is printed on the cover and written as ``certificate.json``;
``protocol.yaml`` is the protocol's full YAML. The PDF is PDF/A-3b with ``results.json``,
``protocol.yaml`` and ``certificate.json`` embedded as associated files (``/AF``), and it keeps
an empty box on the cover for the auditor's approval signature (:attr:`ReportFiles.approval_box`).
Signing comes after (``app.certificates.signing``): the renderer never signs.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

import reconstruction
from app.certificates import (
    APPROVAL_FIELD,
    CERTIFICATE_SCHEMA,
    ISSUANCE_FIELD,
    ISSUER,
    MEANING_APPROVED,
    MEANING_ISSUED,
    SignatureBox,
    git_revision,
)
from reconstruction.instability.common import STABLE_WORDING
from reconstruction.models.formats import sha256_file
from reconstruction.protocols import METRIC_CONVENTIONS, Protocol
from reconstruction.suite import SuiteResult

__all__ = [
    "FIGURE_DPI",
    "PDF_VARIANT",
    "TEMPLATES",
    "Certificate",
    "ReportFiles",
    "SignatureBox",
    "figure_caption",
    "render_html",
    "write_documents",
    "write_figures",
    "write_report",
]

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
FIGURE_DPI = 120
#: the figures' colours: network, baseline (colour-blind safe pair)
NETWORK_COLOUR, BASELINE_COLOUR = "#d55e00", "#0072b2"
DIFF_CMAP = "inferno"
ROLES = ("network", "baseline")
TEST_TITLES = {
    "perturbation": "Tiny worst-case perturbations",
    "structural": "Small structural changes",
    "sampling": "More samples",
}
TEST_QUESTIONS = {
    "perturbation": (
        "Can a perturbation too small to notice, in the image or in the measurements, change the "
        "network's reconstruction much more than it changes the baseline's under the same attack?"
    ),
    "structural": (
        "Does the network reconstruct small details (card suits, text) added to the image that "
        "the compressed-sensing baseline shows?"
    ),
    "sampling": (
        "Does the network's reconstruction improve when it is given more measurements than it "
        "was trained with, as the baseline's does?"
    ),
}
VERDICT_CLASSES = ("unstable", "inconclusive", "stable", "skipped")
PDF_VARIANT = "pdf/a-3b"
#: the element that reserves the approval signature's box on the cover (``id`` in the template)
APPROVAL_ANCHOR = "approval-signature"
#: its size (width, height) in mm, border box
APPROVAL_BOX_MM = (90, 26)
#: CSS px -> PDF points (WeasyPrint draws 1 CSS px as 0.75 pt)
PT_PER_PX = 0.75


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Certificate:
    """The certificate's identity, printed on the cover and written as ``certificate.json``.

    ``id``: the audit's id when the service issues it, else a random UUID (32 hex digits, as
    the service's ids); ``issued``: UTC; ``manifest``: the manifest as submitted (``None`` when
    unknown); ``signed``: ``False`` for a copy written without a signature (the cover says so).
    """

    id: str = field(default_factory=_new_id)
    issued: datetime = field(default_factory=_utc_now)
    audit_id: str | None = None
    manifest: dict[str, Any] | None = None
    service_version: str = reconstruction.__version__
    git_revision: str = field(default_factory=git_revision)
    issuer: str = ISSUER
    verify_url: str | None = None
    signed: bool = True
    #: the audit log's head when the service issued it, ``{"events": n, "head": sha256}``
    #: (anchors the log outside the database: ``recon-audit admin verify-events``)
    event_chain: dict[str, Any] | None = None

    @property
    def issued_text(self) -> str:
        return self.issued.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def to_json(
        self, document: dict[str, Any], *, results_sha256: str, protocol_yaml_sha256: str
    ) -> dict[str, Any]:
        model = document.get("model", {})
        return {
            "schema": CERTIFICATE_SCHEMA,
            "certificate_id": self.id,
            "audit_id": self.audit_id,
            "issued": self.issued.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "issuer": self.issuer,
            "service_version": self.service_version,
            "git_revision": self.git_revision,
            "verify_url": self.verify_url,
            "results_sha256": results_sha256,
            "protocol_yaml_sha256": protocol_yaml_sha256,
            "protocol": document.get("protocol"),
            "model_sha256": model.get("sha256"),
            "manifest_sha256": model.get("manifest_sha256"),
            "manifest": self.manifest,
            "verdicts": document.get("verdicts"),
            "event_chain": self.event_chain,
        }


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote (``pdf`` is ``None`` when no PDF was asked for)."""

    results_json: Path
    html: Path
    pdf: Path | None
    figures: dict[str, Path]
    protocol_yaml: Path | None = None
    certificate_json: Path | None = None
    #: where the approval signature goes in the PDF (None without a PDF)
    approval_box: SignatureBox | None = None


# --------------------------------------------------------------------------------------------
# figures


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def _save(fig: Figure, figures_dir: Path, name: str, out: dict[str, Path]) -> None:
    path = figures_dir / f"{name}.png"
    # no Software key: the bytes depend only on the data and the matplotlib version's drawing
    fig.savefig(path, dpi=FIGURE_DPI, format="png", metadata={"Software": None})
    out[name] = path


def _window(result: SuiteResult) -> tuple[float, float]:
    """The intensity window of every image: the prepared ground truths' range (the truths are
    scaled to the manifest's intensity range, so this is that range)."""
    truth = np.asarray(result.truth)
    perturbation = result.tests.get("perturbation")
    if truth.size == 0 and perturbation is not None:
        truth = np.asarray(perturbation.figures.get("truth", np.zeros(0)))
    if truth.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.min(truth)), float(np.max(truth))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _real(image: Any) -> np.ndarray:
    a = np.asarray(image)
    return np.abs(a) if np.iscomplexobj(a) else a.astype(np.float64)


def _show(
    ax: Axes,
    image: Any,
    title: str,
    window: tuple[float, float],
    cmap: str = "gray",
) -> AxesImage:
    shown = ax.imshow(
        _real(image), cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest"
    )
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _blank(ax: Axes, text: str = "") -> None:
    ax.set_axis_off()
    if text:
        ax.text(
            0.5, 0.5, text, ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes
        )


def _db(value: float) -> str:
    return f"{value:.2f} dB" if math.isfinite(value) else "inf dB"


def _eps_label(threat: str) -> str:
    return "eps = ||r|| / ||x||" if threat == "image" else "eps = ||e|| / ||y||"


def _perturbation_curves(numbers: dict[str, Any], threat: str) -> Figure:
    block = numbers["threat_models"][threat]
    eps = np.asarray(block["eps"], dtype=float)
    fig = _new_figure(6.4, 3.3)
    ax = fig.add_subplot()
    for role, colour in zip(ROLES, (NETWORK_COLOUR, BASELINE_COLOUR), strict=True):
        change = np.asarray([row[role]["output_change"] for row in block["results"]], float)
        noise = np.asarray([row[role]["noise_control_change"] for row in block["results"]], float)
        ax.plot(eps, change.mean(axis=1), "o-", color=colour, label=f"{role}: worst case found")
        ax.fill_between(
            eps, change.min(axis=1), change.max(axis=1), color=colour, alpha=0.18, linewidth=0
        )
        ax.plot(
            eps,
            noise.mean(axis=1),
            "s--",
            color=colour,
            alpha=0.75,
            markersize=4,
            label=f"{role}: Gaussian noise, same norm",
        )
    if eps.size > 1 and eps[-1] / eps[0] >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(_eps_label(threat), fontsize=8)
    ax.set_ylabel("relative output change\n||f(y + e) - f(y)|| / ||f(y)||", fontsize=8)
    ax.set_title(f"{threat}-domain threat model: output change vs budget", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _perturbation_images(
    numbers: dict[str, Any], figs: dict[str, Any], threat: str, window: tuple[float, float]
) -> Figure:
    data = figs[threat]
    last = numbers["threat_models"][threat]["results"][-1]
    worst = int(np.argmax(np.asarray(data["network_change"][-1], dtype=float)))
    eps = float(data["eps"][-1])
    truth = np.asarray(figs["truth"])[worst]
    fig = _new_figure(7.2, 3.9)
    axes = fig.subplots(2, 4)
    _show(axes[0, 0], truth, f"ground truth (image {worst})", window)
    if threat == "image":
        r = np.asarray(data["perturbation"])[worst]
        shown = "|x + r|" if np.iscomplexobj(r) else "x + r"
        _show(axes[1, 0], truth + r, f"{shown}, ||r||/||x|| = {eps:.3g}", window)
    else:
        _blank(
            axes[1, 0],
            f"measurement-domain\nperturbation e,\n||e||/||y|| = {eps:.3g}\n(not an image)",
        )
    diffs = {}
    for role in ROLES:
        clean = _real(np.asarray(data[f"{role}_clean"])[worst])
        perturbed = _real(np.asarray(data[f"{role}_perturbed"])[worst])
        diffs[role] = (clean, perturbed, np.abs(perturbed - clean))
    top = max(float(d[2].max()) for d in diffs.values()) or 1.0
    boxes = data.get("window")
    shown_diff: AxesImage | None = None
    for row, role in enumerate(ROLES):
        clean, perturbed, diff = diffs[role]
        rec = last[role]
        _show(
            axes[row, 1], clean, f"{role}, clean\nPSNR {_db(rec['psnr_clean_db'][worst])}", window
        )
        _show(
            axes[row, 2],
            perturbed,
            f"{role}, perturbed\nPSNR {_db(rec['psnr_perturbed_db'][worst])}",
            window,
        )
        shown_diff = _show(
            axes[row, 3],
            diff,
            f"|f(y+e) - f(y)|, rel. change\n{rec['output_change'][worst]:.3g}",
            (0.0, top),
            DIFF_CMAP,
        )
        if boxes is not None:
            _box(axes[row, 2], boxes[worst])
            _box(axes[row, 3], boxes[worst])
    assert shown_diff is not None
    bar = fig.colorbar(shown_diff, ax=list(axes[:, 3]), shrink=0.8)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{threat}-domain worst case at eps = {eps:.3g} (image {worst}); "
        f"window [{window[0]:.3g}, {window[1]:.3g}]",
        fontsize=8,
    )
    return fig


def _box(ax: Axes, box: Sequence[int]) -> None:
    """Outline ``[row0, col0, row1, col1]`` (the network's worst window)."""
    r0, c0, r1, c1 = box
    ax.add_patch(
        Rectangle(
            (c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="#ffbf00", linewidth=1
        )
    )


def _perturbation_loss(numbers: dict[str, Any], threat: str) -> Figure:
    block = numbers["threat_models"][threat]
    fig = _new_figure(6.4, 2.8)
    axes = fig.subplots(1, 2, sharey=False)
    colours = _ramp(len(block["results"]))
    for ax, role in zip(axes, ROLES, strict=True):
        for colour, row in zip(colours, block["results"], strict=True):
            for k, curve in enumerate(row[role]["loss_curves"]):
                ax.plot(
                    np.arange(1, len(curve) + 1),
                    curve,
                    color=colour,
                    linewidth=1,
                    alpha=1.0 if k == 0 else 0.5,
                    label=f"eps = {row['eps']:.3g}" if k == 0 else None,
                )
        ax.set_title(f"{role} attack ({threat} domain)", fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("best relative change\nso far (mean)", fontsize=7)
    return fig


def _ramp(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(n, 1))][:n]


def _zoom_box(diff: np.ndarray) -> tuple[int, int, int]:
    """``(row0, col0, size)``: a fixed-size square (a quarter of the smaller side, at least
    16 px, at most the image) centred on the largest locally averaged difference."""
    from scipy.ndimage import uniform_filter

    h, w = diff.shape
    size = min(h, w, max(16, min(h, w) // 4))
    smooth = uniform_filter(diff.astype(np.float64), size=5, mode="nearest")
    r, c = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    r0 = int(np.clip(r - size // 2, 0, h - size))
    c0 = int(np.clip(c - size // 2, 0, w - size))
    return r0, c0, size


def _pnas(
    numbers: dict[str, Any], figs: dict[str, Any], window: tuple[float, float]
) -> tuple[Figure, Figure]:
    pnas_numbers, pnas_figs = numbers["pnas"], figs["pnas"]
    roles = [role for role in ROLES if role in pnas_figs]
    final = np.asarray(pnas_numbers["network"]["output_change"], dtype=float)[-1]
    worst = int(np.argmax(final))
    clean_source = figs.get("image", {})
    truth = np.asarray(figs["truth"])[worst]
    recons = {
        role: _real(np.asarray(pnas_figs[role]["reconstructions"])[:, worst]) for role in roles
    }
    perts = {role: np.abs(np.asarray(pnas_figs[role]["perturbations"])[:, worst]) for role in roles}
    cleans = {
        role: _real(np.asarray(clean_source[f"{role}_clean"])[worst])
        if f"{role}_clean" in clean_source
        else recons[role][0]
        for role in roles
    }
    n_check = recons[roles[0]].shape[0]
    # one colour scale for every |r_k|, clipped at the 99.5th percentile (a few hot pixels
    # would otherwise leave the rest black)
    everything = np.concatenate([p.ravel() for p in perts.values()])
    r_top = float(np.percentile(everything, 99.5)) or float(everything.max()) or 1.0
    box = _zoom_box(np.abs(recons["network"][-1] - cleans["network"]))

    main = _new_figure(7.4, 1.3 * len(roles) + 0.5)
    axes = np.asarray(main.subplots(len(roles), 1 + 2 * n_check)).reshape(len(roles), -1)
    shown_r: AxesImage | None = None
    for row, role in enumerate(roles):
        _show(axes[row, 0], cleans[role], f"{role}\nclean f(y)", window)
        axes[row, 0].add_patch(
            Rectangle(
                (box[1] - 0.5, box[0] - 0.5),
                box[2],
                box[2],
                fill=False,
                edgecolor="#ffd54f",
                linewidth=1,
            )
        )
        sizes = pnas_numbers[role]["sizes"]
        for k in range(n_check):
            size = float(sizes[k][worst])
            _show(
                axes[row, 1 + 2 * k],
                recons[role][k],
                f"f(y + A r{k + 1})\n||r{k + 1}||/||x|| = {size:.3g}",
                window,
            )
            shown_r = _show(
                axes[row, 2 + 2 * k], perts[role][k], f"|r{k + 1}|", (0.0, r_top), DIFF_CMAP
            )
    assert shown_r is not None
    bar = main.colorbar(shown_r, ax=list(axes[:, -1]), shrink=0.8)
    bar.ax.tick_params(labelsize=6)
    main.suptitle(f"the paper's search: r1 < r2 < r3 (image {worst})", fontsize=8)

    r0, c0, size = box
    crop = (slice(r0, r0 + size), slice(c0, c0 + size))
    zoom = _new_figure(7.4, 1.35 * len(roles) + 0.5)
    zaxes = np.asarray(zoom.subplots(len(roles), 3 + n_check)).reshape(len(roles), -1)
    d_top = max(float(np.abs(recons[role][-1] - cleans[role])[crop].max()) for role in roles)
    shown_d: AxesImage | None = None
    for row, role in enumerate(roles):
        _show(zaxes[row, 0], truth[crop], "ground truth", window)
        _show(zaxes[row, 1], cleans[role][crop], f"{role}, clean", window)
        for k in range(n_check):
            _show(zaxes[row, 2 + k], recons[role][k][crop], f"{role}, r{k + 1}", window)
        shown_d = _show(
            zaxes[row, 2 + n_check],
            np.abs(recons[role][-1] - cleans[role])[crop],
            f"|f(y + A r{n_check}) - f(y)|",
            (0.0, d_top or 1.0),
            DIFF_CMAP,
        )
    assert shown_d is not None
    bar = zoom.colorbar(shown_d, ax=list(zaxes[:, -1]), shrink=0.8)
    bar.ax.tick_params(labelsize=6)
    zoom.suptitle(
        f"zoom: {size}x{size} px at row {r0}, column {c0} (largest network change at r{n_check})",
        fontsize=8,
    )
    return main, zoom


def _detail_row(numbers: dict[str, Any], panel: dict[str, Any]) -> dict[str, Any] | None:
    image = panel.get("image", 0)
    for row in numbers.get("details", []):
        if (
            row["image"] == image
            and row["name"] == panel["name"]
            and row.get("class_contrast", row["contrast"]) == panel["contrast"]
        ):
            found: dict[str, Any] = row
            return found
    return None


#: the colour of the box marking a detail on its crops
DETAIL_BOX_COLOUR = "#ffd54f"


def _boxed(ax: Axes, box: Sequence[int] | None) -> None:
    """Outline a detail's box ``(row0, col0, row1, col1)`` (crop coordinates) on ``ax``."""
    if box is None:
        return
    r0, c0, r1, c1 = (int(v) for v in box)
    ax.add_patch(
        Rectangle(
            (c0 - 0.5, r0 - 0.5),
            c1 - c0,
            r1 - r0,
            fill=False,
            edgecolor=DETAIL_BOX_COLOUR,
            linewidth=0.8,
        )
    )


def _structural(
    numbers: dict[str, Any], panels: Sequence[dict[str, Any]], window: tuple[float, float]
) -> Figure:
    """Rows = details, columns = truth / network / baseline crops, the detail boxed on each;
    more than four details are laid out in two groups side by side (so twelve still fit a
    page). Missed details come first."""
    groups = 1 if len(panels) <= 4 else 2
    rows = math.ceil(len(panels) / groups)
    fig = _new_figure(3.6 * groups + 1.0, 1.45 * rows + 0.3)
    axes = np.asarray(fig.subplots(rows, 3 * groups)).reshape(rows, 3 * groups)
    for ax in axes.flat:
        ax.set_axis_off()
    for index, panel in enumerate(panels):
        i, c0 = index % rows, 3 * (index // rows)
        row = _detail_row(numbers, panel)
        missed = " (MISSED)" if row is not None and row.get("missed") else ""
        label = (
            f"image {panel.get('image', 0)}: {panel['name']}{missed}\n"
            f"contrast {float(panel['contrast']):g}"
        )
        axes[i, c0].set_axis_on()
        _show(axes[i, c0], panel["truth"], label, window)
        _boxed(axes[i, c0], panel.get("box"))
        for j, role in enumerate(ROLES, start=1):
            if row is None:
                title = role
            else:
                score = row[role]
                seen = "visible" if score["visible"] else "not visible"
                title = f"{role}: recovery {score['contrast_recovery']:.2f}\n({seen})"
            axes[i, c0 + j].set_axis_on()
            _show(axes[i, c0 + j], panel[role], title, window)
            _boxed(axes[i, c0 + j], panel.get("box"))
    fig.suptitle("details (crops; box: the detail; missed details first)", fontsize=8)
    return fig


def _ci_band(rows: list[dict[str, Any]], role: str, key: str) -> tuple[np.ndarray, ...]:
    values = [row[role][key] for row in rows]
    return (
        np.asarray([v["mean"] for v in values], float),
        np.asarray([v["ci_low"] for v in values], float),
        np.asarray([v["ci_high"] for v in values], float),
    )


def _sampling_curves(numbers: dict[str, Any]) -> Figure:
    rows = numbers["ladder"]
    ratios = np.asarray([row["ratio"] for row in rows], dtype=float)
    unit = numbers.get("unit", "ratio")
    fig = _new_figure(6.8, 2.9)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], "psnr", "psnr_db", "PSNR (dB)"), (axes[1], "ssim_ci", "ssim", "SSIM"))
    for ax, key, per_image, label in panels:
        # the axes fit the per-image values: with few images a t interval is far wider than
        # the data, and would hide the curves (its band is then clipped at the axes)
        values = np.asarray([row[r][per_image] for row in rows for r in ROLES], dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            pad = 0.08 * max(float(finite.max() - finite.min()), 1e-3)
            ax.set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
        for role, colour in zip(ROLES, (NETWORK_COLOUR, BASELINE_COLOUR), strict=True):
            mean, low, high = _ci_band(rows, role, key)
            ax.plot(ratios, mean, "o-", color=colour, label=role)
            ax.fill_between(ratios, low, high, color=colour, alpha=0.18, linewidth=0)
            # one thin line per image: the paired curves the verdict compares
            curves = np.asarray([row[role][per_image] for row in rows], dtype=float)
            ax.plot(ratios, curves, "-", color=colour, alpha=0.45, linewidth=0.6)
        decline = numbers.get("decline")
        if decline is not None and decline["metric"] == per_image:
            # the cited decline: from the smaller ratio's mean to the larger one's
            change = float(decline["network"]["mean"])
            means = _ci_band(rows, "network", key)[0]
            at = [float(row["ratio"]) for row in rows].index(float(decline["from_ratio"]))
            ax.annotate(
                f"{change:+.2f}",
                xy=(float(decline["to_ratio"]), means[at] + change),
                xytext=(float(decline["from_ratio"]), means[at]),
                arrowprops={"arrowstyle": "->", "color": NETWORK_COLOUR, "linewidth": 0.8},
                fontsize=6,
                color=NETWORK_COLOUR,
            )
        train = float(numbers["training_ratio"])
        ax.axvline(train, color="0.3", linestyle=":", linewidth=1)
        ax.annotate(
            f"training ({train:.3g})",
            (train, 0.02),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            ha="right",
            va="bottom",
            xytext=(-2, 0),
            textcoords="offset points",
        )
        ax.set_xlabel(
            "number of angles" if unit == "angles" else "sampling ratio (" + unit + ")", fontsize=7
        )
        level = float(numbers.get("thresholds", {}).get("confidence", 0.95))
        ax.set_ylabel(f"{label} (mean, {level:.0%} CI)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def _sampling_images(
    numbers: dict[str, Any], figs: dict[str, Any], truth: np.ndarray, window: tuple[float, float]
) -> Figure:
    rows = numbers["ladder"]
    n = len(figs["ratios"])
    fig = _new_figure(min(7.4, 1.3 * (n + 1) + 0.4), 3.0)
    axes = np.asarray(fig.subplots(2, n + 1)).reshape(2, n + 1)
    if truth.size:
        _show(axes[0, 0], truth, "ground truth\n(image 0)", window)
    else:
        _blank(axes[0, 0])
    _blank(axes[1, 0])
    for j in range(n):
        row = rows[j] if j < len(rows) else None
        ratio = float(figs["ratios"][j])
        tag = " (training)" if row is not None and row.get("training") else ""
        for i, role in enumerate(ROLES):
            psnr = f"\nPSNR {_db(row[role]['psnr_db'][0])}" if row is not None else ""
            _show(axes[i, j + 1], figs[role][j], f"{role}, {ratio:.3g}{tag}{psnr}", window)
    fig.suptitle("reconstructions per sampling ratio (image 0)", fontsize=8)
    return fig


def write_figures(result: SuiteResult, figures_dir: Path) -> dict[str, Path]:
    """Write the report's figures as PNGs into ``figures_dir``; name -> path, in report order.

    Names: ``perturbation_{threat}_curves``, ``perturbation_{threat}_images``,
    ``perturbation_{threat}_loss`` (per threat model run), ``perturbation_pnas`` and
    ``perturbation_pnas_zoom`` (the paper's search), ``structural_details``,
    ``sampling_curves``, ``sampling_images``. Skipped tests (and tests without figure data)
    produce none."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    window = _window(result)
    out: dict[str, Path] = {}
    perturbation = result.tests.get("perturbation")
    if perturbation is not None and perturbation.verdict != "skipped":
        numbers, figs = perturbation.numbers, perturbation.figures
        for threat in numbers.get("threat_models", {}):
            _save(
                _perturbation_curves(numbers, threat),
                figures_dir,
                f"perturbation_{threat}_curves",
                out,
            )
            if threat in figs and "truth" in figs:
                _save(
                    _perturbation_images(numbers, figs, threat, window),
                    figures_dir,
                    f"perturbation_{threat}_images",
                    out,
                )
            _save(
                _perturbation_loss(numbers, threat), figures_dir, f"perturbation_{threat}_loss", out
            )
        if "pnas" in figs and "pnas" in numbers and "network" in figs["pnas"]:
            main, zoom = _pnas(numbers, figs, window)
            _save(main, figures_dir, "perturbation_pnas", out)
            _save(zoom, figures_dir, "perturbation_pnas_zoom", out)
    structural = result.tests.get("structural")
    if structural is not None and structural.verdict != "skipped":
        panels = structural.figures.get("panels") or []
        if panels:
            _save(
                _structural(structural.numbers, panels, window),
                figures_dir,
                "structural_details",
                out,
            )
    samples = result.tests.get("sampling")
    if samples is not None and samples.verdict != "skipped" and samples.numbers.get("ladder"):
        _save(_sampling_curves(samples.numbers), figures_dir, "sampling_curves", out)
        if samples.figures.get("ratios"):
            truth = np.asarray(result.truth)
            _save(
                _sampling_images(
                    samples.numbers,
                    samples.figures,
                    truth[0] if truth.ndim == 3 else np.zeros(0),
                    window,
                ),
                figures_dir,
                "sampling_images",
                out,
            )
    return out


def figure_caption(name: str) -> str:
    """The report's caption for a figure written by :func:`write_figures`."""
    captions = {
        "curves": (
            "Relative output change of the worst perturbation found at each eps ({t} domain): "
            "network and baseline under the same search and budget (mean over images, band: "
            "min to max), and the Gaussian-noise control of the same norm (dashed)."
        ),
        "images": (
            "The worst image at the largest eps ({t} domain): network and baseline, clean and "
            "perturbed, with the same intensity window; the hallucination maps |f(y+e) - f(y)| "
            "share one colour scale; the box is the network's worst window (where its error "
            "grew most), the window the localized searches target."
        ),
        "loss": (
            "The search's progress ({t} domain): the best relative change found so far per "
            "iteration, one line per eps and start (mean over images; later starts faded), on "
            "the pass down the grid; a flat end is the plateau that stopped the start."
        ),
    }
    match = re.fullmatch(r"perturbation_(image|measurement)_(curves|images|loss)", name)
    if match:
        return captions[match.group(2)].format(t=match.group(1))
    return {
        "perturbation_pnas": (
            "The paper's search: reconstructions for perturbations r1 < r2 < r3 of increasing "
            "norm (titled ||r_k|| / ||x||) with |r_k| beside them (one colour scale, clipped at "
            "the 99.5th percentile); the box marks the zoom below."
        ),
        "perturbation_pnas_zoom": (
            "Zoomed crops (fixed size) around the largest change of the network's output at "
            "the last checkpoint, for every checkpoint."
        ),
        "structural_details": (
            "Details added to the images, the missed ones first (up to twelve): the truth with "
            "the detail, the network's and the baseline's reconstructions (crops, same intensity "
            "window; the box marks the detail), with their contrast recovery."
        ),
        "sampling_curves": (
            "PSNR and SSIM against the sampling ratio for the network and the baseline (mean "
            "over images, band: confidence interval, clipped to the axes, which fit the images' "
            "values; thin lines: each image); the dotted line marks the training ratio, the "
            "arrow the decline the verdict cites."
        ),
        "sampling_images": "Reconstructions of image 0 at each sampling ratio.",
    }.get(name, name.replace("_", " "))


# --------------------------------------------------------------------------------------------
# HTML


def _fmt(value: Any, digits: int = 3) -> str:
    """Three significant digits for floats; integers and text as they are; '-' for none."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "\u221e" if value > 0 else "-\u221e"
        return f"{value:.{digits}g}"
    return str(value)


def _fmt_db(value: Any) -> str:
    if value is None:
        return "\u2013"
    v = float(value)
    if math.isinf(v):
        return "\u221e dB" if v > 0 else "-\u221e dB"
    return f"{v:.2f} dB"


def _fmt_seconds(value: Any) -> str:
    return "\u2013" if value is None else f"{float(value):.2f} s"


def _mean(values: Iterable[Any]) -> float | None:
    a = np.asarray(list(values), dtype=float)
    return float(a.mean()) if a.size else None


def _max(values: Iterable[Any]) -> float | None:
    a = np.asarray(list(values), dtype=float)
    return float(a.max()) if a.size else None


def _verdict_class(verdict: Any) -> str:
    return str(verdict) if verdict in VERDICT_CLASSES else "skipped"


def _search_diagnostics(rec: dict[str, Any]) -> dict[str, Any]:
    """How strong the search behind one row was (results written before the search recorded
    its convergence show the restarts' spread only)."""
    # restart_changes: [starts][images]
    starts = np.asarray(rec.get("restart_changes") or [], dtype=float)
    n_starts = int(starts.shape[0]) if starts.ndim == 2 else 0
    search = rec.get("search")
    if search is None:
        several = n_starts > 1
        return {
            "restarts": n_starts,
            "iterations": len(rec["loss_curves"][0]) if rec.get("loss_curves") else 0,
            "plateaued": None,
            "spread": _max(1.0 - starts.min(axis=0) / np.maximum(starts.max(axis=0), 1e-12))
            if several
            else None,
            "passes": None,
        }
    spreads = [v for v in search["restart_spread"] if v is not None]
    done = sum(bool(v) for v in search["plateaued"])
    return {
        "restarts": n_starts,
        "iterations": max(search["iterations"], default=0),
        "plateaued": f"{done} of {len(search['plateaued'])}",
        "spread": _max(spreads) if spreads else None,
        "passes": search["passes"],
    }


def _perturbation_view(test: dict[str, Any]) -> dict[str, Any]:
    threats = []
    for threat, block in test.get("threat_models", {}).items():
        rows, diagnostics, local = [], [], []
        for row in block["results"]:
            net_change = np.asarray(row["network"]["output_change"], float)
            base_change = np.asarray(row["baseline"]["output_change"], float)
            ratio = _mean(net_change / np.maximum(base_change, 1e-12))
            for role in ROLES:
                rec = row[role]
                rows.append(
                    {
                        "eps": row["eps"],
                        "role": role,
                        "size": _mean(rec["size"]),
                        "change": _mean(rec["output_change"]),
                        "change_max": _max(rec["output_change"]),
                        "ratio": ratio if role == "network" else None,
                        "noise": _mean(rec["noise_control_change"]),
                        "psnr_clean": _mean(rec["psnr_clean_db"]),
                        "psnr_perturbed": _mean(rec["psnr_perturbed_db"]),
                        "local": _max(rec.get("local_error_increase_db", [])),
                        "persistence": _mean(rec["persistence"]),
                        "lipschitz": _mean(rec["local_lipschitz"]),
                    }
                )
                diagnostics.append(
                    {
                        "eps": row["eps"],
                        "role": role,
                        "best": _max(rec["output_change"]),
                        "queries": rec.get("queries"),
                        **_search_diagnostics(rec),
                    }
                )
                targeted = row.get(f"local_{role}")
                if targeted is not None:
                    local.append(
                        {
                            "eps": row["eps"],
                            "role": role,
                            "change": _max(targeted["window_change"]),
                            "local": _max(targeted["local_error_increase_db"]),
                            "psnr_drop": _max(
                                np.asarray(targeted["psnr_clean_db"], float)
                                - np.asarray(targeted["psnr_perturbed_db"], float)
                            ),
                            "targeted": targeted.get("targeted", True),
                            **_search_diagnostics(targeted),
                        }
                    )
        amplification = block.get("amplification") or {}
        threats.append(
            {
                "name": threat,
                "normalisation": block.get("normalisation", _eps_label(threat)),
                "rows": rows,
                "diagnostics": diagnostics,
                "local": local,
                "amplification": {
                    role: _mean(amplification[role]) if amplification.get(role) else None
                    for role in ROLES
                },
                "amplification_method": amplification.get("method"),
            }
        )
    pnas = []
    for role in ROLES:
        block = test.get("pnas", {}).get(role)
        if block is None:
            continue
        checkpoints = [
            {
                "k": k + 1,
                "size": _mean(block["sizes"][k]),
                "change": _mean(block["output_change"][k]),
                "psnr": _mean(block["psnr_db"][k]),
                "iterations": ", ".join(str(i) for i in block["iterations"][k]),
            }
            for k in range(len(block["sizes"]))
        ]
        pnas.append({"role": role, "checkpoints": checkpoints, "stop": block["stop_reason"]})
    return {
        "threats": threats,
        "convergence": test.get("convergence"),
        "pnas": pnas,
        "pnas_settings": test.get("pnas", {}).get("settings"),
        "evidence": test.get("evidence", [])[:5],
        "borderline": test.get("borderline", [])[:5],
        "evidence_total": len(test.get("evidence", [])),
        "borderline_total": len(test.get("borderline", [])),
    }


def _sampling_view(test: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for row in test.get("ladder", []):
        entry: dict[str, Any] = {
            "factor": row["factor"],
            "ratio": row["ratio"],
            "training": row["training"],
        }
        for role in ROLES:
            entry[role] = {
                "psnr": row[role]["psnr"],
                "ssim": row[role]["ssim_ci"],
                "per_image": row[role]["psnr_db"],
            }
        rows.append(entry)
    largest = test.get("largest_decline") or {}
    return {
        "rows": rows,
        "images": range(len(rows[0]["network"]["per_image"])) if rows else range(0),
        "declines": [
            {"label": label, **largest[metric]}
            for metric, label in (("psnr_db", "PSNR (dB)"), ("ssim", "SSIM"))
            if largest.get(metric)
        ],
    }


def _structural_view(test: dict[str, Any]) -> dict[str, Any]:
    smallest = test.get("smallest_recovered_px") or {}
    contrasts = sorted(smallest.get("network", {}), key=float)
    return {
        "classes": test.get("classes", []),
        "paired": test.get("paired"),
        "smallest": [
            {
                "contrast": c,
                "network": smallest["network"].get(c),
                "baseline": smallest.get("baseline", {}).get(c),
            }
            for c in contrasts
        ],
    }


def _test_views(results: dict[str, Any]) -> list[dict[str, Any]]:
    views = []
    for name, test in results.get("tests", {}).items():
        view: dict[str, Any] = {
            "name": name,
            "title": TEST_TITLES.get(name, name),
            "question": TEST_QUESTIONS.get(name, ""),
            "verdict": test.get("verdict", "skipped"),
            "verdict_class": _verdict_class(test.get("verdict")),
            "reason": test.get("reason", ""),
            "numbers": test,
        }
        if test.get("verdict") != "skipped":
            if name == "perturbation":
                view["perturbation"] = _perturbation_view(test)
            elif name == "sampling":
                view["sampling"] = _sampling_view(test)
            elif name == "structural":
                view["structural"] = _structural_view(test)
        views.append(view)
    return views


def _overall(views: list[dict[str, Any]]) -> str:
    def titles(verdict: str) -> str:
        return ", ".join(v["title"].lower() for v in views if v["verdict"] == verdict)

    if titles("unstable"):
        return f"The audit found instabilities: {titles('unstable')}."
    if titles("inconclusive"):
        return (
            "The audit found no clear instability, but some results are inconclusive: "
            f"{titles('inconclusive')}."
        )
    if titles("stable"):
        return f"In every test that ran: {STABLE_WORDING}."
    return "No test ran."


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    env.filters["db"] = _fmt_db
    env.filters["seconds"] = _fmt_seconds
    return env


def _certificate_view(certificate: Certificate | None) -> dict[str, Any] | None:
    if certificate is None:
        return None
    manifest = certificate.manifest or {}
    return {
        "id": certificate.id,
        "audit_id": certificate.audit_id,
        "issued": certificate.issued_text,
        "issuer": certificate.issuer,
        "service_version": certificate.service_version,
        "git_revision": certificate.git_revision,
        "verify_url": certificate.verify_url,
        "signed": certificate.signed,
        "event_chain": certificate.event_chain,
        "manifest": manifest,
        "manifest_json": json.dumps(manifest, indent=2, sort_keys=True) if manifest else "",
        "sampling_json": json.dumps(manifest.get("sampling"), sort_keys=True)
        if manifest.get("sampling") is not None
        else "",
        "statement": manifest.get("statement"),
        "description": manifest.get("description"),
        "issuance_field": ISSUANCE_FIELD,
        "approval_field": APPROVAL_FIELD,
        "meaning_issued": MEANING_ISSUED,
        "meaning_approved": MEANING_APPROVED,
    }


def render_html(
    results: dict[str, Any],
    figures: dict[str, str],
    protocol_yaml: str,
    certificate: Certificate | None = None,
) -> str:
    """The report as HTML from the results.json document ``results``, the figures (name ->
    path relative to the HTML file's folder) and the protocol's YAML (every value filled in);
    with a ``certificate``, also its identity, the signature block and the approval box."""
    views = _test_views(results)
    for view in views:
        view["figures"] = [
            {"name": name, "src": src, "caption": figure_caption(name)}
            for name, src in figures.items()
            if name.split("_", 1)[0] == view["name"]
        ]
    model = results.get("model", {})
    timings = results.get("timings_seconds", {})
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            results=results,
            model=model,
            tests=views,
            overall=_overall(views),
            protocol=results.get("protocol", {}),
            protocol_document=results.get("protocol_document", {}),
            protocol_yaml=protocol_yaml,
            environment=results.get("environment", {}),
            timings=timings,
            total_time=sum(float(v) for v in timings.values()),
            images=results.get("images", []),
            # results written before conventions were named used the project's
            metric_convention=results.get("metric_convention")
            or {"name": "recon-audit", "description": METRIC_CONVENTIONS["recon-audit"]},
            stable_wording=STABLE_WORDING,
            black_box=model.get("gradient_access") == "black-box",
            certificate=_certificate_view(certificate),
            approval_anchor=APPROVAL_ANCHOR,
            approval_box_mm=APPROVAL_BOX_MM,
        )
    )


def write_report(
    result: SuiteResult,
    out_dir: Path,
    *,
    pdf: bool = True,
    certificate: Certificate | None = None,
) -> ReportFiles:
    """Write ``results.json``, ``figures/*.png``, ``protocol.yaml``, ``certificate.json``,
    ``report.html`` and (``pdf``) ``report.pdf`` into ``out_dir`` (created when missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_figures(result, out_dir / "figures")
    return write_documents(result.to_json(), figures, out_dir, pdf=pdf, certificate=certificate)


def _unique_af(_document: Any, pdf: Any) -> None:
    """WeasyPrint 69 lists each attachment twice in the catalog's ``/AF`` (PDF/A-3 associated
    files): once from the embedded-files name tree, once from the file specifications."""
    if "AF" in pdf.catalog:
        seen = list(dict.fromkeys(pdf.catalog["AF"]))
        pdf.catalog["AF"].clear()
        pdf.catalog["AF"].extend(seen)


def _approval_box(document: Any) -> SignatureBox | None:
    """The approval box's rectangle in PDF points, from WeasyPrint's laid-out pages (anchors
    are the top-left corners of elements with an ``id``, in CSS px from the page's top left;
    the box's size is fixed by :data:`APPROVAL_BOX_MM`)."""
    width, height = (mm / 25.4 * 72 for mm in APPROVAL_BOX_MM)
    for index, page in enumerate(document.pages):
        anchor = page.anchors.get(APPROVAL_ANCHOR)
        if anchor is None:
            continue
        x, top = anchor[0] * PT_PER_PX, (page.height - anchor[1]) * PT_PER_PX
        return SignatureBox(index, (round(x), round(top - height), round(x + width), round(top)))
    return None


def write_documents(
    document: dict[str, Any],
    figures: dict[str, Path],
    out_dir: Path,
    *,
    pdf: bool = True,
    certificate: Certificate | None = None,
) -> ReportFiles:
    """``results.json``, ``protocol.yaml``, ``certificate.json``, ``report.html`` and (``pdf``)
    ``report.pdf`` from a results document and its figures already in ``out_dir`` (also used to
    merge the shards of an audit). ``certificate``: the certificate's identity (default: a new
    id, issued now, no manifest). The PDF is PDF/A-3b with the three JSON/YAML files attached;
    it is not signed."""
    certificate = certificate or Certificate()
    results_json = out_dir / "results.json"
    results_json.write_text(json.dumps(document, indent=2), encoding="utf-8")
    relative = {name: path.relative_to(out_dir).as_posix() for name, path in figures.items()}
    protocol_yaml = Protocol.model_validate(document["protocol_document"]).to_yaml()
    protocol_path = out_dir / "protocol.yaml"
    protocol_path.write_text(protocol_yaml, encoding="utf-8")
    certificate_path = out_dir / "certificate.json"
    identity = certificate.to_json(
        document,
        results_sha256=sha256_file(results_json),
        protocol_yaml_sha256=sha256_file(protocol_path),
    )
    certificate_path.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    html = render_html(document, relative, protocol_yaml, certificate)
    html_path = out_dir / "report.html"
    html_path.write_text(html, encoding="utf-8")
    pdf_path: Path | None = None
    box: SignatureBox | None = None
    if pdf:
        from weasyprint import HTML, Attachment  # type: ignore[import-untyped]

        pdf_path = out_dir / "report.pdf"
        # base_url: the report's folder (trailing separator), so figures/x.png resolves there
        rendered = HTML(string=html, base_url=str(out_dir.resolve()) + "/").render(
            pdf_variant=PDF_VARIANT
        )
        box = _approval_box(rendered)
        attachments = [
            Attachment(
                filename=str(results_json),
                name="results.json",
                description="The audit's results (recon-audit/results/v1)",
                relationship="Data",
            ),
            Attachment(
                filename=str(protocol_path),
                name="protocol.yaml",
                description="The audit protocol, every value filled in",
                relationship="Source",
            ),
            Attachment(
                filename=str(certificate_path),
                name="certificate.json",
                description=f"The certificate's identity ({CERTIFICATE_SCHEMA})",
                relationship="Data",
            ),
        ]
        rendered.write_pdf(
            pdf_path, pdf_variant=PDF_VARIANT, attachments=attachments, finisher=_unique_af
        )
    return ReportFiles(
        results_json=results_json,
        html=html_path,
        pdf=pdf_path,
        figures=figures,
        protocol_yaml=protocol_path,
        certificate_json=certificate_path,
        approval_box=box,
    )
