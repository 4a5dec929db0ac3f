"""The report as HTML: ``templates/report.html.j2`` rendered by Jinja2 (autoescaped, strict
about undefined names) from the results.json document, the figures' paths and the protocol's
YAML, through the view models of :mod:`app.report.views`."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.certificates.identity import Certificate
from app.report.views import certificate_view, overall, sections
from reconstruction.instability.common import STABLE_WORDING
from reconstruction.protocols import METRIC_CONVENTIONS

__all__ = ["APPROVAL_ANCHOR", "APPROVAL_BOX_MM", "TEMPLATES", "render_html"]

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
#: the element that reserves the approval signature's box on the cover (``id`` in the template)
APPROVAL_ANCHOR = "approval-signature"
#: its size (width, height) in mm, border box
APPROVAL_BOX_MM = (90, 26)


# --------------------------------------------------------------------------------------------
# the template's filters


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


def render_html(
    results: dict[str, Any],
    figures: dict[str, str],
    protocol_yaml: str,
    certificate: Certificate | None = None,
) -> str:
    """The report as HTML from the results.json document ``results``, the figures (name ->
    path relative to the HTML file's folder) and the protocol's YAML (every value filled in);
    with a ``certificate``, also its identity, the signature block and the approval box."""
    views = sections(results, figures)
    model = results.get("model", {})
    timings = results.get("timings_seconds", {})
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            results=results,
            model=model,
            tests=views,
            overall=overall(views),
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
            # results written before routes were recorded: from the gradient access
            gradient_route=model.get("gradient_route")
            or ("gradient-free" if model.get("gradient_access") == "black-box" else "exact"),
            certificate=certificate_view(certificate),
            approval_anchor=APPROVAL_ANCHOR,
            approval_box_mm=APPROVAL_BOX_MM,
        )
    )
