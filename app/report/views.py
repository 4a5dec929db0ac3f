"""The view models the report's template reads: one per test (its title, question, verdict and
the tables drawn from its block of results.json), the overall verdict sentence, and the
certificate's identity."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from app.certificates import APPROVAL_FIELD, ISSUANCE_FIELD, MEANING_APPROVED, MEANING_ISSUED
from app.certificates.identity import Certificate
from app.report.captions import figure_caption
from app.report.titles import ROLES, TEST_QUESTIONS, TEST_TITLES, eps_label
from reconstruction.instability.common import STABLE_WORDING
from reconstruction.instability.numbers import (
    Amplification,
    LocalRecord,
    MaskingRow,
    Outcome,
    Perturbation,
    Record,
    RoleRecord,
    Sampling,
    Structural,
    ThreatBlock,
)
from reconstruction.instability.registry import BY_NAME

__all__ = ["TEST_VIEWS", "VERDICT_CLASSES", "certificate_view", "overall", "sections"]

VERDICT_CLASSES = ("unstable", "inconclusive", "stable", "skipped")


def _reduced(values: Iterable[Any], reduce: Callable[[np.ndarray], Any]) -> float | None:
    """``reduce`` over the values as floats; ``None`` for none."""
    a = np.asarray(list(values), dtype=float)
    return float(reduce(a)) if a.size else None


def _mean(values: Iterable[Any]) -> float | None:
    return _reduced(values, np.mean)


def _max(values: Iterable[Any]) -> float | None:
    return _reduced(values, np.max)


def _verdict_class(verdict: Any) -> str:
    return str(verdict) if verdict in VERDICT_CLASSES else "skipped"


# --------------------------------------------------------------------------------------------
# perturbation


def _search_diagnostics(rec: RoleRecord | LocalRecord) -> dict[str, Any]:
    """How strong the search behind one row was (results written before the search recorded
    its convergence show the restarts' spread only)."""
    # restart_changes: [starts][images]
    restart_changes = rec.restart_changes if isinstance(rec, RoleRecord) else []
    starts = np.asarray(restart_changes, dtype=float)
    n_starts = int(starts.shape[0]) if starts.ndim == 2 else 0
    search = rec.search
    if search is None:
        assert isinstance(rec, RoleRecord)
        several = n_starts > 1
        return {
            "restarts": n_starts,
            "iterations": len(rec.loss_curves[0]) if rec.loss_curves else 0,
            "plateaued": None,
            "spread": _max(1.0 - starts.min(axis=0) / np.maximum(starts.max(axis=0), 1e-12))
            if several
            else None,
            "passes": None,
        }
    spreads = [v for v in search.restart_spread if v is not None]
    done = sum(bool(v) for v in search.plateaued)
    return {
        "restarts": n_starts,
        "iterations": max(search.iterations, default=0),
        "plateaued": f"{done} of {len(search.plateaued)}",
        "spread": _max(spreads) if spreads else None,
        "passes": search.passes,
    }


def _masking_row(eps: float, worst: list[float], m: MaskingRow) -> dict[str, Any]:
    """One eps's masking checks, over images: the best random direction against the search's
    worst case, and the gradient's directional derivative as a fraction of the central
    difference (the smallest over directions and images, and how many directions there
    were)."""
    ratios = [
        g / d
        for grads, diffs in zip(m.gradient_slope or [], m.difference_slope or [], strict=True)
        for g, d in zip(grads, diffs, strict=True)
        if d != 0
    ]
    return {
        "eps": eps,
        "random": _max(m.random_best),
        "search": _max(worst),
        "random_over_search": _max(
            np.asarray(m.random_best, float) / np.maximum(np.asarray(worst, float), 1e-12)
        ),
        "gradient_over_difference": min(ratios) if ratios else None,
        "directions": sum(len(g) for g in m.gradient_slope or []),
    }


def _threat_view(threat: str, block: ThreatBlock, objective: str) -> dict[str, Any]:
    """One threat model's tables: a row per eps and role, the searches' diagnostics, the
    localized searches and the masking checks."""
    rows, diagnostics, local, masking = [], [], [], []
    for row in block.results:
        if row.masking is not None:
            worst = row.network.output_change if objective == "change" else row.network.error
            masking.append(_masking_row(row.eps, worst, row.masking))
        net_change = np.asarray(row.network.output_change, float)
        base_change = np.asarray(row.baseline.output_change, float)
        ratio = _mean(net_change / np.maximum(base_change, 1e-12))
        for role in ROLES:
            rec = row.role(role)
            rows.append(
                {
                    "eps": row.eps,
                    "role": role,
                    "size": _mean(rec.size),
                    "change": _mean(rec.output_change),
                    "change_max": _max(rec.output_change),
                    "ratio": ratio if role == "network" else None,
                    "noise": _mean(rec.noise_control_change),
                    "psnr_clean": _mean(rec.psnr_clean_db),
                    "psnr_perturbed": _mean(rec.psnr_perturbed_db),
                    "local": _max(rec.local_error_increase_db or []),
                    "persistence": _mean(rec.persistence),
                    "lipschitz": _mean(rec.local_lipschitz),
                }
            )
            diagnostics.append(
                {
                    "eps": row.eps,
                    "role": role,
                    "best": _max(rec.output_change),
                    "queries": rec.queries,
                    **_search_diagnostics(rec),
                }
            )
            targeted = row.local(role)
            if targeted is not None:
                local.append(
                    {
                        "eps": row.eps,
                        "role": role,
                        "change": _max(targeted.window_change),
                        "local": _max(targeted.local_error_increase_db or []),
                        "psnr_drop": _max(
                            np.asarray(targeted.psnr_clean_db, float)
                            - np.asarray(targeted.psnr_perturbed_db, float)
                        ),
                        "targeted": targeted.targeted,
                        **_search_diagnostics(targeted),
                    }
                )
    amplification = block.amplification or Amplification()
    return {
        "name": threat,
        "normalisation": block.normalisation or eps_label(threat),
        "rows": rows,
        "diagnostics": diagnostics,
        "local": local,
        "masking": masking,
        "masking_passes": None if block.masking is None else block.masking.passes,
        "masking_seeds": [] if block.masking is None else block.masking.seeds,
        "search_passes": None if block.passes is None else block.passes.get("network"),
        "amplification": {
            "network": _mean(amplification.network) if amplification.network else None,
            "baseline": _mean(amplification.baseline) if amplification.baseline else None,
        },
        "amplification_method": amplification.method,
    }


def _perturbation_view(test: Outcome) -> dict[str, Any]:
    assert isinstance(test, Perturbation)
    threats = [
        _threat_view(threat, block, test.objective) for threat, block in test.threat_models.items()
    ]
    pnas = []
    for role in ROLES:
        block = None if test.pnas is None else test.pnas.role(role)
        if block is None:
            continue
        checkpoints = [
            {
                "k": k + 1,
                "size": _mean(block.sizes[k]),
                "change": _mean(block.output_change[k]),
                "psnr": _mean(block.psnr_db[k]),
                "iterations": ", ".join(str(i) for i in block.iterations[k]),
            }
            for k in range(len(block.sizes))
        ]
        pnas.append({"role": role, "checkpoints": checkpoints, "stop": block.stop_reason})
    return {
        "threats": threats,
        "convergence": _plain(test.convergence),
        # results written before routes were recorded: from the gradient access
        "route": test.gradient_route
        or ("exact" if test.gradient_access == "white-box" else "gradient-free"),
        "strength": _plain(test.strength),
        "masking": _plain(test.gradient_masking),
        "masking_settings": None if test.masking is None else test.masking.model_dump(),
        "pnas": pnas,
        "pnas_settings": None if test.pnas is None else test.pnas.settings.model_dump(),
        "evidence": [_plain(e) for e in test.evidence[:5]],
        "borderline": [_plain(e) for e in test.borderline[:5]],
        "evidence_total": len(test.evidence),
        "borderline_total": len(test.borderline),
    }


# --------------------------------------------------------------------------------------------
# sampling and structural


def _sampling_view(test: Outcome) -> dict[str, Any]:
    assert isinstance(test, Sampling)
    rows = []
    for row in test.ladder:
        entry: dict[str, Any] = {"factor": row.factor, "ratio": row.ratio, "training": row.training}
        for role in ROLES:
            scores = row.role(role)
            entry[role] = {
                "psnr": _plain(scores.psnr),
                "ssim": _plain(scores.ssim_ci),
                "per_image": scores.psnr_db,
            }
        rows.append(entry)
    largest = test.largest_decline
    return {
        "rows": rows,
        "images": range(len(rows[0]["network"]["per_image"])) if rows else range(0),
        "declines": [
            {"label": label, **_plain(comparison)}
            for metric, label in (("psnr_db", "PSNR (dB)"), ("ssim", "SSIM"))
            if (comparison := largest.get(metric)) is not None
        ],
    }


def _structural_view(test: Outcome) -> dict[str, Any]:
    assert isinstance(test, Structural)
    smallest = test.smallest_recovered_px
    network, baseline = smallest.get("network", {}), smallest.get("baseline", {})
    return {
        "classes": [_plain(c) for c in test.classes],
        "paired": _plain(test.paired),
        "smallest": [
            {"contrast": c, "network": network.get(c), "baseline": baseline.get(c)}
            for c in sorted(network, key=float)
        ],
    }


def _plain(record: Record | None) -> Any:
    """A record as the template reads it (its JSON fields, as written)."""
    return None if record is None else record.model_dump(exclude_unset=True)


#: each test's view of its numbers, by the registry's names
TEST_VIEWS: dict[str, Callable[[Outcome], dict[str, Any]]] = {
    "perturbation": _perturbation_view,
    "sampling": _sampling_view,
    "structural": _structural_view,
}


# --------------------------------------------------------------------------------------------
# the report


def sections(results: dict[str, Any], figures: dict[str, str]) -> list[dict[str, Any]]:
    """A view per test of the results.json document ``results``, in its order, each with its
    figures (name -> path) and their captions."""
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
        if test.get("verdict") != "skipped" and name in TEST_VIEWS:
            view[name] = TEST_VIEWS[name](BY_NAME[name].block.validate_python(test))
        view["figures"] = [
            {"name": figure, "src": src, "caption": figure_caption(figure)}
            for figure, src in figures.items()
            if figure.split("_", 1)[0] == name
        ]
        views.append(view)
    return views


def overall(views: list[dict[str, Any]]) -> str:
    """The overall verdict, in one sentence."""

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


def certificate_view(certificate: Certificate | None) -> dict[str, Any] | None:
    """The certificate's identity, the manifest (as JSON too) and the signatures' names."""
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
