"""The figures' captions in the report, by the names :func:`app.report.figures.write_figures`
gives them."""

from __future__ import annotations

import re

__all__ = ["figure_caption"]

#: per threat model (``{t}``: ``image`` or ``measurement``)
_THREAT_CAPTIONS = {
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
_CAPTIONS = {
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
}


def figure_caption(name: str) -> str:
    """The report's caption for a figure (its name, spaced out, for an unknown one)."""
    match = re.fullmatch(r"perturbation_(image|measurement)_(curves|images|loss)", name)
    if match:
        return _THREAT_CAPTIONS[match.group(2)].format(t=match.group(1))
    return _CAPTIONS.get(name, name.replace("_", " "))
