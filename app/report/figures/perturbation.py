"""The perturbation test's figures: per threat model, the output change against the budget, the
worst image at the largest budget and the search's progress; the paper's search (r1 < r2 < r3)
and its zoom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from app.report.figures.common import (
    DIFF_CMAP,
    ROLE_COLOURS,
    Window,
    blank,
    db,
    new_figure,
    outline,
    save,
    show,
)
from app.report.titles import ROLES, eps_label
from reconstruction.data import magnitude
from reconstruction.instability.numbers import Outcome, Perturbation, PnasNumbers, ThreatBlock

__all__ = ["write"]

#: the outline of the network's worst window (the localized searches' target)
WORST_WINDOW_COLOUR = "#ffbf00"
#: the outline of the zoomed region
ZOOM_COLOUR = "#ffd54f"

# --------------------------------------------------------------------------------------------
# what the figures read: the test's numbers (:class:`Perturbation`: per threat model a
# :class:`ThreatBlock`, a row per eps with a record per role) and its figure arrays: ``truth``,
# per threat model the worst case at the largest eps (``perturbation``, per role its ``clean``
# and ``perturbed`` reconstructions ``[images, H, W]``, the network's worst ``window``), and
# ``pnas`` per role


def _role_image(arrays: dict[str, Any], state: str, role: str, index: int) -> np.ndarray:
    """Image ``index`` of a role's ``clean`` or ``perturbed`` reconstructions, as magnitudes."""
    return magnitude(np.asarray(arrays[state][role])[index])


# --------------------------------------------------------------------------------------------
# the figures


def _curves(block: ThreatBlock, threat: str) -> Figure:
    eps = np.asarray(block.eps, dtype=float)
    fig = new_figure(6.4, 3.3)
    ax = fig.add_subplot()
    for role in ROLES:
        colour = ROLE_COLOURS[role]
        change = np.asarray([row.role(role).output_change for row in block.results], float)
        noise = np.asarray([row.role(role).noise_control_change for row in block.results], float)
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
    ax.set_xlabel(eps_label(threat), fontsize=8)
    ax.set_ylabel("relative output change\n||f(y + e) - f(y)|| / ||f(y)||", fontsize=8)
    ax.set_title(f"{threat}-domain threat model: output change vs budget", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _images(block: ThreatBlock, figs: dict[str, Any], threat: str, window: Window) -> Figure:
    data = figs[threat]
    last = block.results[-1]
    worst = int(np.argmax(np.asarray(last.network.output_change, dtype=float)))
    eps = float(block.eps[-1])
    truth = np.asarray(figs["truth"])[worst]
    fig = new_figure(7.2, 3.9)
    axes = fig.subplots(2, 4)
    show(axes[0, 0], truth, f"ground truth (image {worst})", window)
    if threat == "image":
        r = np.asarray(data["perturbation"])[worst]
        shown = "|x + r|" if np.iscomplexobj(r) else "x + r"
        show(axes[1, 0], truth + r, f"{shown}, ||r||/||x|| = {eps:.3g}", window)
    else:
        blank(
            axes[1, 0],
            f"measurement-domain\nperturbation e,\n||e||/||y|| = {eps:.3g}\n(not an image)",
        )
    diffs = {}
    for role in ROLES:
        clean = _role_image(data, "clean", role, worst)
        perturbed = _role_image(data, "perturbed", role, worst)
        diffs[role] = (clean, perturbed, np.abs(perturbed - clean))
    top = max(float(d[2].max()) for d in diffs.values()) or 1.0
    boxes = data.get("window")
    shown_diff: AxesImage | None = None
    for row, role in enumerate(ROLES):
        clean, perturbed, diff = diffs[role]
        rec = last.role(role)
        show(axes[row, 1], clean, f"{role}, clean\nPSNR {db(rec.psnr_clean_db[worst])}", window)
        show(
            axes[row, 2],
            perturbed,
            f"{role}, perturbed\nPSNR {db(rec.psnr_perturbed_db[worst])}",
            window,
        )
        shown_diff = show(
            axes[row, 3],
            diff,
            f"|f(y+e) - f(y)|, rel. change\n{rec.output_change[worst]:.3g}",
            (0.0, top),
            DIFF_CMAP,
        )
        if boxes is not None:
            outline(axes[row, 2], boxes[worst], WORST_WINDOW_COLOUR)
            outline(axes[row, 3], boxes[worst], WORST_WINDOW_COLOUR)
    assert shown_diff is not None
    bar = fig.colorbar(shown_diff, ax=list(axes[:, 3]), shrink=0.8)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{threat}-domain worst case at eps = {eps:.3g} (image {worst}); "
        f"window [{window[0]:.3g}, {window[1]:.3g}]",
        fontsize=8,
    )
    return fig


def _loss(block: ThreatBlock, threat: str) -> Figure:
    fig = new_figure(6.4, 2.8)
    axes = fig.subplots(1, 2, sharey=False)
    colours = _ramp(len(block.results))
    for ax, role in zip(axes, ROLES, strict=True):
        for colour, row in zip(colours, block.results, strict=True):
            for k, curve in enumerate(row.role(role).loss_curves):
                ax.plot(
                    np.arange(1, len(curve) + 1),
                    curve,
                    color=colour,
                    linewidth=1,
                    alpha=1.0 if k == 0 else 0.5,
                    label=f"eps = {row.eps:.3g}" if k == 0 else None,
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


def _pnas(pnas: PnasNumbers, figs: dict[str, Any], window: Window) -> tuple[Figure, Figure]:
    """The paper's search: ``pnas`` (per role ``output_change`` and ``sizes`` per checkpoint
    and image) and ``figs["pnas"][role]`` (``reconstructions``, ``perturbations``
    ``[checkpoints, images, H, W]``); the clean reconstructions come from the image-domain
    threat model's arrays when it ran."""
    pnas_figs = figs["pnas"]
    roles = [role for role in ROLES if role in pnas_figs and pnas.role(role) is not None]
    final = np.asarray(pnas.network.output_change, dtype=float)[-1]
    worst = int(np.argmax(final))
    clean_source = figs.get("image", {})
    truth = np.asarray(figs["truth"])[worst]
    recons = {
        role: magnitude(np.asarray(pnas_figs[role]["reconstructions"])[:, worst]) for role in roles
    }
    perts = {role: np.abs(np.asarray(pnas_figs[role]["perturbations"])[:, worst]) for role in roles}
    cleans = {
        role: _role_image(clean_source, "clean", role, worst)
        if role in clean_source.get("clean", {})
        else recons[role][0]
        for role in roles
    }
    n_check = recons[roles[0]].shape[0]
    # the change of each role's output at the last checkpoint
    changes = {role: np.abs(recons[role][-1] - cleans[role]) for role in roles}
    # one colour scale for every |r_k|, clipped at the 99.5th percentile (a few hot pixels
    # would otherwise leave the rest black)
    everything = np.concatenate([p.ravel() for p in perts.values()])
    r_top = float(np.percentile(everything, 99.5)) or float(everything.max()) or 1.0
    r0, c0, size = _zoom_box(changes["network"])

    main = new_figure(7.4, 1.3 * len(roles) + 0.5)
    axes = np.asarray(main.subplots(len(roles), 1 + 2 * n_check)).reshape(len(roles), -1)
    shown_r: AxesImage | None = None
    for row, role in enumerate(roles):
        show(axes[row, 0], cleans[role], f"{role}\nclean f(y)", window)
        outline(axes[row, 0], (r0, c0, r0 + size, c0 + size), ZOOM_COLOUR)
        record = pnas.role(role)
        assert record is not None
        sizes = record.sizes
        for k in range(n_check):
            norm = float(sizes[k][worst])
            show(
                axes[row, 1 + 2 * k],
                recons[role][k],
                f"f(y + A r{k + 1})\n||r{k + 1}||/||x|| = {norm:.3g}",
                window,
            )
            shown_r = show(
                axes[row, 2 + 2 * k], perts[role][k], f"|r{k + 1}|", (0.0, r_top), DIFF_CMAP
            )
    assert shown_r is not None
    bar = main.colorbar(shown_r, ax=list(axes[:, -1]), shrink=0.8)
    bar.ax.tick_params(labelsize=6)
    main.suptitle(f"the paper's search: r1 < r2 < r3 (image {worst})", fontsize=8)

    crop = (slice(r0, r0 + size), slice(c0, c0 + size))
    zoom = new_figure(7.4, 1.35 * len(roles) + 0.5)
    zaxes = np.asarray(zoom.subplots(len(roles), 3 + n_check)).reshape(len(roles), -1)
    d_top = max(float(changes[role][crop].max()) for role in roles)
    shown_d: AxesImage | None = None
    for row, role in enumerate(roles):
        show(zaxes[row, 0], truth[crop], "ground truth", window)
        show(zaxes[row, 1], cleans[role][crop], f"{role}, clean", window)
        for k in range(n_check):
            show(zaxes[row, 2 + k], recons[role][k][crop], f"{role}, r{k + 1}", window)
        shown_d = show(
            zaxes[row, 2 + n_check],
            changes[role][crop],
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


def write(
    numbers: Outcome,
    figs: dict[str, Any],
    _truth: np.ndarray,
    window: Window,
    figures_dir: Path,
    out: dict[str, Path],
) -> None:
    """``perturbation_{threat}_curves``, ``_images`` and ``_loss`` per threat model run, then
    ``perturbation_pnas`` and ``perturbation_pnas_zoom`` when the paper's search ran
    (``figs``: the test's figure arrays, which hold the truths)."""
    assert isinstance(numbers, Perturbation)
    for threat, block in numbers.threat_models.items():
        save(_curves(block, threat), figures_dir, f"perturbation_{threat}_curves", out)
        if threat in figs and "truth" in figs:
            save(
                _images(block, figs, threat, window),
                figures_dir,
                f"perturbation_{threat}_images",
                out,
            )
        save(_loss(block, threat), figures_dir, f"perturbation_{threat}_loss", out)
    if "pnas" in figs and numbers.pnas is not None and "network" in figs["pnas"]:
        main, zoom = _pnas(numbers.pnas, figs, window)
        save(main, figures_dir, "perturbation_pnas", out)
        save(zoom, figures_dir, "perturbation_pnas_zoom", out)
