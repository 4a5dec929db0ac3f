"""Test 1: tiny worst-case perturbations, network beside the baseline attacked the same way.

For each threat model and each ``eps`` of the protocol's grid: the worst perturbation found for
the network and, with the same search and budget, for the baseline (whole-image objective);
the localized damage each causes (worst sliding window, :mod:`~reconstruction.instability.local`);
searches that target the network's worst window, for the network and the baseline alike; the
controls (Gaussian noise of the same norm, worst of N draws; the worst case plus noise of a
fraction of its norm, the paper's Fig. 2); the local amplification (the Jacobian's largest
singular value at the clean input, network and baseline); and, when the protocol asks, the
paper's heavy-ball search giving ``r1 < r2 < r3``.

Verdict (thresholds from the protocol; ``docs/verdicts.md`` gives the reasons):

* ``unstable`` -- for some image, threat model and ``eps``, a perturbation found makes the
  network change by at least ``margin`` times what the baseline changes at the same ``eps``
  (whole image; or inside the window targeted, both attacked there), *and* the damage is
  material: the network's PSNR against the ground truth falls by ``min_psnr_drop_db``, or its
  SSIM by ``min_ssim_drop``, or its worst window's error grows by ``local_min_psnr_drop_db``;
* ``inconclusive`` -- the change exceeds the margin but the damage is not material; or no
  evidence was found but the network's search did not converge (a start still improving at its
  cap, or its two best starts disagreeing by more than ``max_restart_spread``), or its gradients
  look masked (:mod:`~reconstruction.instability.masking`), or its gradient route was not shown
  strong (:data:`MEASURED_STRENGTH`): absence of evidence from a search that was not finished,
  or not shown to be strong, is not evidence of absence;
* ``stable`` -- otherwise: "no instability found within the protocol's budget".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconstruction.attacks import (
    BudgetResult,
    BudgetSearch,
    ThreatModel,
    budget_search,
    output_change,
    pnas_search,
)
from reconstruction.batch import gaussian, norms, per_item
from reconstruction.instability.common import (
    STABLE_WORDING,
    AuditData,
    Recon,
    Scoring,
    Subject,
    TestResult,
    Unit,
    Verdict,
    agreed,
    baseline_reconstructor,
    measure,
    network_reconstructor,
    seeded,
    to_numpy,
)
from reconstruction.instability.local import local_damage, window_change, window_masks
from reconstruction.instability.masking import probe, signs
from reconstruction.instability.numbers import GradientRoute
from reconstruction.protocols import Masking, PerturbationThresholds, Protocol

__all__ = ["MEASURED_STRENGTH", "REQUIRED_STRENGTH", "merge_perturbation", "run_perturbation"]

Progress = Callable[[int], None]
ROLES = ("network", "baseline")
#: budgets the baseline's search may be resumed by where a case against the network waits on
#: its finishing (a convex-regularised solver's search climbs slowly but does finish)
RESUMPTIONS = 3
#: what the threat models' budgets are relative to
NORMALISATION = {"image": "||r|| / ||x||", "measurement": "||e|| / ||y||"}
#: a search may sign ``stable`` only where its gradient route was measured to reach this
#: fraction of an independent reference search's worst change at every eps and image
REQUIRED_STRENGTH = 0.95
#: the fraction each gradient route's search was measured to reach (``None``: not measured);
#: every figure here is stated, with where it was measured, in docs/verdicts.md ("Gradient
#: routes"), which a test checks. ``exact``: tests/reconstruction/test_attack_strength.py and
#: benchmarks/attack_strength.py at ``standard``'s settings
MEASURED_STRENGTH: dict[GradientRoute, float | None] = {
    "exact": 0.95,
    "straight-through surrogate": None,
    "gradient-free": None,
}
#: how a reason names each route whose strength is not shown
ROUTE_WORDS: dict[GradientRoute, str] = {
    "exact": "exact gradient",
    "straight-through surrogate": "straight-through surrogate gradient",
    "gradient-free": "gradient-free search only",
}


def _roi(protocol: Protocol, shape: tuple[int, ...], device: torch.device) -> Tensor | None:
    assert protocol.perturbation is not None
    box = protocol.perturbation.roi
    if box is None:
        return None
    protocol.perturbation.check_image_size(shape[-2:])
    r0, c0, r1, c1 = box
    roi = torch.zeros(shape[-2:], device=device)
    roi[r0:r1, c0:c1] = 1.0
    return roi


def _noise_control(
    f: Recon, y: Tensor, clean: Tensor, e: Tensor, draws: int, seed: int, roi: Tensor | None
) -> Tensor:
    """Worst relative change over ``draws`` Gaussian perturbations with ``e``'s norm."""
    gen = torch.Generator().manual_seed(seed)
    worst = torch.zeros(y.shape[0], device=y.device)
    with torch.no_grad():
        for _ in range(draws):
            noisy = f(y + gaussian(e, norms(e), gen))
            worst = torch.maximum(worst, output_change(noisy, clean, roi))
    return worst


def _persistence(
    f: Recon, y: Tensor, clean: Tensor, result: BudgetResult, fraction: float, seed: int
) -> Tensor:
    """``||f(y + e + n) - f(y)|| / ||f(y + e) - f(y)||`` for noise ``n`` of ``fraction ||e||``
    (the artefact persists when this stays near 1)."""
    e = result.measurement_perturbation
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noisy = f(y + e + gaussian(e, fraction * norms(e), gen))
    return norms(noisy - clean) / norms(result.reconstruction - clean).clamp_min(1e-12)


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def _search_record(result: BudgetResult) -> dict[str, Any]:
    """How the search got to its worst case: the evidence behind its strength."""
    return {
        "iterations": [int(v) for v in result.iterations.tolist()],
        "plateaued": [bool(v) for v in result.plateaued.tolist()],
        "restart_spread": [None if math.isnan(v) else float(v) for v in result.restart_spread],
        "passes": result.passes,
        "starts": result.starts,
    }


def _damage(
    f_clean: Tensor, result: BudgetResult, truth: Tensor, window: float, score: Scoring
) -> dict[str, Any]:
    clean, perturbed = score(f_clean, truth), score(result.reconstruction, truth)
    local = local_damage(f_clean, result.reconstruction, truth, window)
    return {
        "size": _floats(result.size),
        "measurement_size": _floats(result.measurement_size),
        "output_change": _floats(result.change),
        "error": _floats(result.error),
        "psnr_clean_db": clean["psnr_db"],
        "psnr_perturbed_db": perturbed["psnr_db"],
        "ssim_clean": clean["ssim"],
        "ssim_perturbed": perturbed["ssim"],
        "worst_window": local.boxes.tolist(),
        "local_error_increase_db": _floats(local.error_increase_db),
        "local_change": _floats(local.change),
    }


def _records(
    result: BudgetResult, f_clean: Tensor, truth: Tensor, window: float, score: Scoring
) -> dict[str, Any]:
    e_norm = norms(result.measurement_perturbation)
    diff = norms(result.reconstruction - f_clean)
    return {
        **_damage(f_clean, result, truth, window, score),
        "local_lipschitz": _floats(diff / e_norm.clamp_min(1e-12)),
        "search": _search_record(result),
        "restart_changes": result.restart_changes,
        "loss_curves": result.loss_curves,
    }


@dataclass
class _Finding:
    """One perturbation's case against the network at one (threat, eps, image)."""

    kind: str
    ratio: float
    network_change: float
    baseline_change: float
    psnr_drop: float
    ssim_drop: float
    local_increase: float

    def material(self, th: PerturbationThresholds) -> bool:
        return _material(self.psnr_drop, self.ssim_drop, self.local_increase, th)


def _material(psnr_drop: float, ssim_drop: float, local: float, th: PerturbationThresholds) -> bool:
    return bool(
        psnr_drop >= th.min_psnr_drop_db
        or ssim_drop >= th.min_ssim_drop
        or local >= th.local_min_psnr_drop_db
    )


def _finding(
    kind: str, net: dict[str, Any], net_change: float, base_change: float, i: int
) -> _Finding:
    return _Finding(
        kind=kind,
        ratio=net_change / max(base_change, 1e-12),
        network_change=net_change,
        baseline_change=base_change,
        psnr_drop=net["psnr_clean_db"][i] - net["psnr_perturbed_db"][i],
        ssim_drop=net["ssim_clean"][i] - net["ssim_perturbed"][i],
        local_increase=net["local_error_increase_db"][i],
    )


def _unit_point(result: BudgetResult, scale: Tensor) -> Tensor:
    """An eps's worst case as a point of the unit ball (the search's own variable)."""
    return result.perturbation / per_item(scale * result.eps, result.perturbation)


def _unit_points(search: BudgetSearch, scale: Tensor) -> list[Tensor]:
    return [_unit_point(r, scale) for r in search.results]


def _resume_baseline(
    searches: dict[str, BudgetSearch],
    search: Callable[..., BudgetSearch],
    scale: Tensor,
    margin: float,
) -> BudgetSearch:
    """The baseline's search, resumed from its best points (one start each, a budget at a
    time, at most ``RESUMPTIONS`` times) at every eps where it stopped at its cap on an image
    whose network change reaches the margin over it: a case against the network then rests
    on a baseline search that finished, not on where the baseline's cap fell (an unfinished
    one understates the baseline's change and so makes the case only borderline)."""
    base, net = searches["baseline"], searches["network"]
    results, passes = list(base.results), base.passes

    def waiting(k: int) -> bool:
        b, n = results[k], net.results[k]
        return bool((~b.plateaued & (n.change.cpu() >= margin * b.change.cpu())).any())

    for k in range(len(results)):
        for _ in range(RESUMPTIONS):
            if not waiting(k):
                break
            # each eps on its own: from its best point only (no warm start from a larger ball)
            more = search(eps=[results[k].eps], initial=[_unit_point(results[k], scale)])
            results[k] = _resumed(results[k], more.results[0])
            passes += more.passes
    return replace(base, results=results, passes=passes)


def _resumed(first: BudgetResult, then: BudgetResult) -> BudgetResult:
    """One eps's search and its resumption from its best points: the better point per image,
    the iterations and passes of both, finished where either finished."""
    gained = then.change > first.change

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(per_item(gained.to(a.device), a), b, a)

    return replace(
        first,
        perturbation=pick(first.perturbation, then.perturbation),
        measurement_perturbation=pick(
            first.measurement_perturbation, then.measurement_perturbation
        ),
        size=pick(first.size, then.size),
        measurement_size=pick(first.measurement_size, then.measurement_size),
        change=pick(first.change, then.change),
        error=pick(first.error, then.error),
        reconstruction=pick(first.reconstruction, then.reconstruction),
        iterations=first.iterations + then.iterations,
        plateaued=first.plateaued | then.plateaued,
        passes=first.passes + then.passes,
    )


def _convergence(rows: list[dict[str, Any]], threat: str, spread_limit: float) -> list[str]:
    """Why the network's searches at this threat model do not support ``stable``."""
    problems = []
    for row in rows:
        for kind, rec in (("whole image", row["network"]), ("window", row.get("local_network"))):
            if rec is None:
                continue
            s = rec["search"]
            where = f"{threat} domain, eps = {row['eps']:g}, {kind}"
            for i, plateaued in enumerate(s["plateaued"]):
                if not plateaued:
                    problems.append(
                        f"search still improving at its cap ({where}, image {i}, "
                        f"{s['iterations'][i]} iterations)"
                    )
            for i, spread in enumerate(s["restart_spread"]):
                if spread is None and kind == "window":
                    continue  # one start from the whole-image worst case, by design
                if spread is None:
                    problems.append(f"one start only: agreement not shown ({where}, image {i})")
                elif spread > spread_limit:
                    problems.append(
                        f"restarts disagree by {spread:.0%} ({where}, image {i}; limit "
                        f"{spread_limit:.0%})"
                    )
    return problems


def run_perturbation(
    subject: Subject,
    truth: Tensor,
    protocol: Protocol,
    *,
    progress: Progress | None = None,
    data: AuditData | None = None,
    unit: Unit | None = None,
    part: str | None = None,
) -> TestResult:
    """Run test 1 on the images ``truth`` ``[B, H, W]`` (scaled to the intensity range);
    ``data``: their measured k-space and data ranges (:class:`AuditData`); ``unit``: the part
    of the audit these images are (its seed; default: the whole audit); ``part``: one of the
    protocol's threat models only (the paper's search goes with the image domain's), a part
    merged with the others by :func:`merge_threats`."""
    cfg = protocol.perturbation
    assert cfg is not None
    if part is not None and part not in cfg.threat_models:
        raise ValueError(f"no threat model {part!r} in this protocol: {cfg.threat_models}")
    seed = protocol.seed if unit is None else unit.seed
    op = subject.operator
    white = subject.gradient_access == "white-box"
    f_net = network_reconstructor(subject, differentiable=white)
    f_base = baseline_reconstructor(op, protocol.baseline, attack=True)
    fs = {"network": f_net, "baseline": f_base}
    y = measure(op, truth, data)
    score = Scoring.of(protocol, data)
    roi = _roi(protocol, tuple(truth.shape), truth.device)
    with torch.no_grad():
        clean = {role: f(y) for role, f in fs.items()}
    th = cfg.thresholds
    settings = cfg.budget.settings()
    role_settings = {
        "network": settings,
        "baseline": replace(
            settings,
            restarts=cfg.budget.baseline_restarts,
            keep=min(settings.keep, cfg.budget.baseline_restarts),
        ),
    }
    local_settings = replace(
        settings,
        restarts=cfg.local.restarts,
        keep=min(settings.keep, cfg.local.restarts),
        jacobian_start=False,
        both_ways=False,
    )
    window = cfg.local.window
    per_threat: dict[str, Any] = {}
    figures: dict[str, Any] = {"truth": to_numpy(truth)}
    for t_index, threat in enumerate(cfg.threat_models):
        if part is not None and threat != part:
            continue  # seeded by its place in the protocol's list, in its own part
        threat_model: ThreatModel = threat
        scale = norms(truth) if threat == "image" else norms(y)
        searches: dict[str, BudgetSearch] = {}
        for r_index, role in enumerate(ROLES):
            searches[role] = budget_search(
                fs[role],
                op,
                truth,
                y,
                threat_model=threat_model,
                eps=cfg.budget.eps,
                settings=role_settings[role],
                seed=seeded(seed, 1, t_index, r_index),
                roi=roi,
                objective=cfg.budget.objective,
                gradients=white or role == "baseline",
                progress=progress,
            )
        searches["baseline"] = _resume_baseline(
            searches,
            partial(
                budget_search,
                f_base,
                op,
                truth,
                y,
                threat_model=threat_model,
                settings=replace(
                    role_settings["baseline"],
                    restarts=1,
                    keep=1,
                    jacobian_start=False,
                    both_ways=False,
                ),
                seed=seeded(seed, 8, t_index),
                roi=roi,
                objective=cfg.budget.objective,
                progress=progress,
            ),
            scale,
            th.margin,
        )
        runs = {role: searches[role].results for role in ROLES}
        masking_seed = seeded(seed, 7, t_index)
        checks = probe(
            f_net,
            op,
            truth,
            y,
            threat_model=threat_model,
            eps=cfg.budget.eps,
            objective=cfg.budget.objective,
            roi=roi,
            settings=cfg.masking,
            gradients=white,
            seed=masking_seed,
        )
        # the network's worst window at the largest eps: where it is damaged most
        target = local_damage(
            clean["network"], runs["network"][-1].reconstruction, truth, window
        ).boxes
        local_runs: dict[str, dict[int, BudgetResult]] = {}
        if cfg.local.attack:
            masks = window_masks(tuple(truth.shape), target, truth.device)

            every = list(range(len(cfg.budget.eps)))
            for r_index, role in enumerate(ROLES):
                ks = every
                if role == "baseline":
                    # the baseline's window search can only raise its window change: it is
                    # needed only where the network's window change reaches the margin over the
                    # baseline's untargeted one
                    ks = [
                        k
                        for k in every
                        if bool(
                            (
                                window_change(
                                    clean["network"],
                                    local_runs["network"][k].reconstruction,
                                    target,
                                )
                                >= th.margin
                                * window_change(
                                    clean["baseline"], runs["baseline"][k].reconstruction, target
                                )
                            ).any()
                        )
                    ]
                starts = _unit_points(searches[role], scale)
                found = (
                    budget_search(
                        fs[role],
                        op,
                        truth,
                        y,
                        threat_model=threat_model,
                        eps=[cfg.budget.eps[k] for k in ks],
                        settings=local_settings,
                        seed=seeded(seed, 5, t_index, r_index),
                        roi=masks,
                        gradients=white or role == "baseline",
                        initial=[starts[k] for k in ks],
                        progress=progress,
                    ).results
                    if ks
                    else []
                )
                local_runs[role] = dict(zip(ks, found, strict=True))
        rows = []
        for k, eps in enumerate(cfg.budget.eps):
            row: dict[str, Any] = {"eps": eps}
            for role in ROLES:
                result = runs[role][k]
                rec = _records(result, clean[role], truth, window, score)
                rec["noise_control_change"] = _floats(
                    _noise_control(
                        fs[role],
                        y,
                        clean[role],
                        result.measurement_perturbation,
                        cfg.controls.noise_draws,
                        seeded(seed, 2, t_index, k),
                        roi,
                    )
                )
                rec["persistence"] = _floats(
                    _persistence(
                        fs[role],
                        y,
                        clean[role],
                        result,
                        cfg.controls.persistence_noise,
                        seeded(seed, 3, t_index, k),
                    )
                )
                if role == "network" and result.queries is not None:
                    rec["queries"] = result.queries
                row[role] = rec
                if local_runs:
                    targeted = k in local_runs[role]
                    local = local_runs[role][k] if targeted else result
                    row[f"local_{role}"] = {
                        **_damage(clean[role], local, truth, window, score),
                        "window": target.tolist(),
                        "window_change": _floats(
                            window_change(clean[role], local.reconstruction, target)
                        ),
                        "targeted": targeted,
                        "search": _search_record(local),
                    }
            row["masking"] = checks.rows[k]
            rows.append(row)
        amplification = {
            role: None if s.amplification is None else _floats(s.amplification)
            for role, s in searches.items()
        }
        per_threat[threat] = {
            "eps": list(cfg.budget.eps),
            "normalisation": NORMALISATION[threat],
            "results": rows,
            "amplification": {
                **amplification,
                "method": searches["network"].jacobian_method,
            },
            "passes": {role: s.passes for role, s in searches.items()},
            "masking": {"seeds": [masking_seed], "passes": checks.passes},
        }
        worst = runs["network"][-1]
        # the arrays behind the worst case's figure (the numbers are in ``per_threat``): at the
        # largest eps, the network's perturbation, each role's clean and perturbed
        # reconstructions, and the network's worst window per image
        figures[threat] = {
            "perturbation": to_numpy(worst.perturbation),
            "clean": {role: to_numpy(clean[role]) for role in ROLES},
            "perturbed": {role: to_numpy(runs[role][-1].reconstruction) for role in ROLES},
            "window": target.tolist(),
        }

    numbers: dict[str, Any] = {
        "search": (
            f"{settings.method} steps (restarts {settings.restarts}, keep {settings.keep}, "
            f"cap {settings.iterations} iterations, plateau {settings.plateau_tolerance:g} over "
            f"{settings.plateau_window})"
            if white
            else "SPSA (black-box: weaker evidence)"
        ),
        "objective": cfg.budget.objective,
        "gradient_access": subject.gradient_access,
        "gradient_route": subject.gradient_route,
        "baseline": protocol.baseline.method,
        "baseline_attack_iterations": protocol.baseline.attack_iterations,
        "threat_models": per_threat,
        "thresholds": th.model_dump(),
        "local": cfg.local.model_dump(),
        "masking": cfg.masking.model_dump(),
    }
    if cfg.pnas is not None and "image" in cfg.threat_models and part in (None, "image") and white:
        numbers["pnas"], figures["pnas"] = _run_pnas(
            subject, f_net, f_base, truth, y, protocol, roi, progress, score, seed
        )
    return _judged(numbers, figures)


def _route(numbers: dict[str, Any]) -> GradientRoute:
    """The search's gradient route (documents written before routes were recorded: from the
    gradient access, when only the exact and gradient-free routes existed)."""
    route: GradientRoute | None = numbers.get("gradient_route")
    if route is not None:
        return route
    return "exact" if numbers["gradient_access"] == "white-box" else "gradient-free"


def _strength(route: GradientRoute) -> dict[str, Any]:
    measured = MEASURED_STRENGTH[route]
    return {
        "route": route,
        "measured": measured,
        "required": REQUIRED_STRENGTH,
        "shown": measured is not None and measured >= REQUIRED_STRENGTH,
    }


def _masking(numbers: dict[str, Any]) -> dict[str, Any]:
    """The masking checks' signs in the numbers (none checked where the settings are absent:
    documents written before the checks)."""
    per_threat = numbers["threat_models"]
    passes = sum(b.get("masking", {}).get("passes", 0) for b in per_threat.values())
    if numbers.get("masking") is None:
        return {"checked": False, "masked": False, "signs": [], "passes": passes}
    settings = Masking.model_validate(numbers["masking"])
    found, checked = signs(per_threat, numbers["objective"], settings)
    return {"checked": checked, "masked": bool(found), "signs": found[:20], "passes": passes}


def _judged(numbers: dict[str, Any], figures: dict[str, Any]) -> TestResult:
    """The verdict on the numbers of the searches (``threat_models``): the findings, the
    searches' convergence, the signs of gradient masking, whether the gradient route was shown
    strong, and the reason; set into ``numbers``. Every test-1 verdict (one run, its parts, its
    units) is drawn here."""
    th = PerturbationThresholds.model_validate(numbers["thresholds"])
    evidence, borderline, problems = _findings(numbers["threat_models"], th)
    evidence.sort(key=lambda e: (e["eps"], -e["change_ratio"]))
    numbers["convergence"] = {"converged": not problems, "problems": problems[:20]}
    numbers["evidence"] = evidence[:20]
    numbers["borderline"] = borderline[:20]
    numbers["gradient_route"] = _route(numbers)
    numbers["strength"] = _strength(numbers["gradient_route"])
    numbers["gradient_masking"] = _masking(numbers)
    verdict, reason = _verdict(
        evidence, borderline, problems, th, numbers["strength"], numbers["gradient_masking"]
    )
    if numbers["gradient_access"] != "white-box":
        reason += " (black-box search: weaker evidence)"
    return TestResult("perturbation", verdict, reason, numbers, figures)


def _findings(
    per_threat: dict[str, Any], th: PerturbationThresholds
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Every case against the network (per threat model, eps, image and objective: the ratio
    reaches the margin), split into evidence (material damage, the baseline's search
    plateaued) and borderline cases; and why the network's searches do not support
    ``stable``."""
    evidence: list[dict[str, Any]] = []
    borderline: list[dict[str, Any]] = []
    problems: list[str] = []
    for threat, block in per_threat.items():
        for row in block["results"]:
            net, base = row["network"], row["baseline"]
            for i in range(len(net["output_change"])):
                candidates = [
                    (
                        _finding(
                            "whole image", net, net["output_change"][i], base["output_change"][i], i
                        ),
                        base["search"]["plateaued"][i],
                    )
                ]
                if "local_network" in row:
                    ln, lb = row["local_network"], row["local_baseline"]
                    candidates.append(
                        (
                            _finding(
                                "window", ln, ln["window_change"][i], lb["window_change"][i], i
                            ),
                            lb["search"]["plateaued"][i],
                        )
                    )
                for c, baseline_done in candidates:
                    if c.ratio < th.margin:
                        continue
                    finding = {
                        "threat_model": threat,
                        "eps": row["eps"],
                        "image": i,
                        "objective": c.kind,
                        "network_change": c.network_change,
                        "baseline_change": c.baseline_change,
                        "change_ratio": c.ratio,
                        "network_psnr_drop_db": c.psnr_drop,
                        "network_ssim_drop": c.ssim_drop,
                        "network_local_error_increase_db": c.local_increase,
                        "baseline_psnr_drop_db": base["psnr_clean_db"][i]
                        - base["psnr_perturbed_db"][i],
                        "baseline_search_plateaued": baseline_done,
                    }
                    # a baseline search still improving may have understated the baseline's
                    # change, and so overstated the ratio: not evidence on its own
                    strong = c.material(th) and baseline_done
                    (evidence if strong else borderline).append(finding)
        problems += _convergence(block["results"], threat, th.max_restart_spread)
    return evidence, borderline, problems


def _first(items: list[str]) -> str:
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{items[0]}{more}"


def _verdict(
    evidence: list[dict[str, Any]],
    borderline: list[dict[str, Any]],
    problems: list[str],
    th: PerturbationThresholds,
    strength: dict[str, Any],
    masking: dict[str, Any],
) -> tuple[Verdict, str]:
    if evidence:
        first = evidence[0]
        where = "whole image" if first["objective"] == "whole image" else "in the window targeted"
        return "unstable", (
            f"at eps = {first['eps']:g} ({first['threat_model']} domain, image "
            f"{first['image']}, {where}) the network's output changed by "
            f"{first['network_change']:.3g} relative, {first['change_ratio']:.3g}x the "
            f"baseline's {first['baseline_change']:.3g}, and the damage is material: PSNR "
            f"{-first['network_psnr_drop_db']:+.2f} dB, SSIM {-first['network_ssim_drop']:+.3f}, "
            f"worst window's error {first['network_local_error_increase_db']:+.1f} dB "
            f"(thresholds: {th.margin:g}x; {th.min_psnr_drop_db:g} dB, {th.min_ssim_drop:g}, "
            f"{th.local_min_psnr_drop_db:g} dB)"
        )
    if borderline:
        first = borderline[0]
        material = _material(
            first["network_psnr_drop_db"],
            first["network_ssim_drop"],
            first["network_local_error_increase_db"],
            th,
        )
        # a material case is borderline only because the baseline's search did not finish
        why = (
            "the baseline's search was still improving at its cap (its change may be "
            "understated, the ratio overstated), with the damage material"
            if material
            else "the damage is not material"
        )
        return "inconclusive", (
            "the network's output change exceeds the baseline's by "
            f"{first['change_ratio']:.3g}x at eps = {first['eps']:g} ({first['threat_model']} "
            f"domain, image {first['image']}), but {why}: "
            f"PSNR {-first['network_psnr_drop_db']:+.2f} dB (threshold "
            f"{th.min_psnr_drop_db:g}), SSIM {-first['network_ssim_drop']:+.3f} "
            f"({th.min_ssim_drop:g}), worst window "
            f"{first['network_local_error_increase_db']:+.1f} dB ({th.local_min_psnr_drop_db:g})"
        )
    # no evidence: ``stable`` only from a search shown strong, unmasked and finished
    doubts = []
    if masking["signs"]:
        doubts.append(f"gradients look masked: {_first(masking['signs'])}")
    elif not masking["checked"]:
        doubts.append("gradient masking not checked")
    if not strength["shown"]:
        doubts.append(f"{ROUTE_WORDS[strength['route']]}: its strength is not shown")
    if problems:
        doubts.append(f"the search is not shown to be finished: {_first(problems)}")
    if doubts:
        return "inconclusive", f"no instability found, but {'; and '.join(doubts)}"
    return "stable", STABLE_WORDING


def _run_pnas(
    subject: Subject,
    f_net: Recon,
    f_base: Recon,
    truth: Tensor,
    y: Tensor,
    protocol: Protocol,
    roi: Tensor | None,
    progress: Progress | None,
    score: Scoring,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    assert protocol.perturbation is not None
    assert protocol.perturbation.pnas is not None
    cfg = protocol.perturbation.pnas
    settings = cfg.model_dump(exclude={"attack_baseline"})
    numbers: dict[str, Any] = {"settings": cfg.model_dump()}
    figures: dict[str, Any] = {}
    roles = [("network", f_net)] + ([("baseline", f_base)] if cfg.attack_baseline else [])
    for index, (role, f) in enumerate(roles):
        result = pnas_search(
            f,
            subject.operator,
            truth,
            y,
            seed=seeded(seed, 4, index),
            roi=roi,
            progress=progress,
            **settings,
        )
        psnr = [[float(v) for v in score.psnr(r, truth)] for r in result.reconstructions]
        numbers[role] = {
            "sizes": result.sizes.tolist(),
            "output_change": result.changes.tolist(),
            "psnr_db": psnr,
            "iterations": result.iterations.tolist(),
            "stop_reason": result.stop_reason,
            "loss_curve": result.loss_curve,
        }
        figures[role] = {
            "perturbations": to_numpy(result.perturbations),
            "reconstructions": to_numpy(result.reconstructions),
        }
    return numbers, figures


# --------------------------------------------------------------------------------------------
# merging the units of an audit (consecutive images, in order)


def _same_starts(values: list[list[Any]]) -> bool:
    """Whether the units' searches had as many starts (a baseline's window search runs for
    the units whose images need it only: elsewhere its record is the whole-image search's)."""
    counts = {len(v) for v in values if v}
    return len(counts) <= 1


def _mean_curves(curves: list[list[list[float]]], weights: list[int]) -> list[list[float]]:
    """Per start, the mean over images of curves that are each a mean over a unit's images
    (weighted by its images); a curve that stopped early (every start of its unit done) holds
    its last value, as its images' best so far does. Units whose searches had other starts
    have no common curves: none."""
    if not any(curves) or not _same_starts(curves):
        return []
    starts = max(len(c) for c in curves)
    out: list[list[float]] = []
    for k in range(starts):
        parts = [(c[k], w) for c, w in zip(curves, weights, strict=True) if c and c[k]]
        if not parts:
            out.append([])
            continue
        length = max(len(curve) for curve, _ in parts)
        total = sum(w for _, w in parts)
        out.append(
            [
                sum(w * curve[min(j, len(curve) - 1)] for curve, w in parts) / total
                for j in range(length)
            ]
        )
    return out


def _merged_search(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "iterations": [v for r in records for v in r["iterations"]],
        "plateaued": [v for r in records for v in r["plateaued"]],
        "restart_spread": [v for r in records for v in r["restart_spread"]],
        "passes": sum(r["passes"] for r in records),
        # the starts' kinds, each once, in order (the same for every unit but where a window
        # search ran for some units only)
        "starts": records[0]["starts"]
        if all(r["starts"] == records[0]["starts"] for r in records)
        else list(dict.fromkeys(label for r in records for label in r["starts"])),
    }


def _merged_record(records: list[dict[str, Any]], weights: list[int]) -> dict[str, Any]:
    """One role's record at one eps over the units: per-image lists joined, costs summed, the
    loss curves averaged over every image."""
    out: dict[str, Any] = {}
    for key, first in records[0].items():
        values = [r[key] for r in records]
        if key == "search":
            out[key] = _merged_search(values)
        elif key == "loss_curves":
            out[key] = _mean_curves(values, weights)
        elif key == "restart_changes":  # [starts][images]; none where the starts differ
            same = _same_starts(values) and all(values)
            out[key] = (
                [[c for v in values for c in v[k]] for k in range(len(first))] if same else []
            )
        elif key == "queries":
            out[key] = sum(values)
        elif key == "targeted":  # the baseline's window search ran for some unit's images
            out[key] = any(values)
        elif isinstance(first, list):
            out[key] = [item for v in values for item in v]
        else:
            out[key] = agreed(values, key)
    return out


def _merged_pnas(blocks: list[dict[str, Any]], weights: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"settings": agreed([b["settings"] for b in blocks], "pnas")}
    for role in ("network", "baseline"):
        records = [b[role] for b in blocks if b.get(role) is not None]
        if not records:
            continue
        merged: dict[str, Any] = {}
        for key in ("sizes", "output_change", "psnr_db", "iterations"):  # [checkpoints][images]
            rows = agreed([len(r[key]) for r in records], "the paper's checkpoints")
            merged[key] = [[v for r in records for v in r[key][k]] for k in range(rows)]
        reasons = list(dict.fromkeys(r["stop_reason"] for r in records))
        merged["stop_reason"] = "; ".join(reasons)
        merged["loss_curve"] = _mean_curves([[r["loss_curve"]] for r in records], weights)[0]
        out[role] = merged
    return out


#: the settings of test 1's block, the same in every unit and part of an audit
_SETTINGS = (
    "search",
    "objective",
    "gradient_access",
    "baseline",
    "baseline_attack_iterations",
    "thresholds",
    "local",
    "gradient_route",
    "masking",
)


def _settings(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: agreed([b[key] for b in blocks], key) for key in _SETTINGS if key in blocks[0]}


def merge_threats(
    blocks: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
) -> TestResult:
    """Test 1 on one unit from its parts (:func:`run_perturbation`'s ``part``: each one threat
    model, in the protocol's order; the paper's search in the image domain's): the threat
    models' searches side by side, then the findings, the convergence and the verdict drawn
    from them, as for one run of every threat model. ``figures``: the parts' figure arrays,
    side by side."""
    numbers = _settings(blocks)
    threats = [threat for b in blocks for threat in b["threat_models"]]
    if len(set(threats)) != len(threats):
        raise ValueError(f"the parts of test 1 repeat a threat model: {threats}")
    numbers["threat_models"] = {t: v for b in blocks for t, v in b["threat_models"].items()}
    pnas = [b["pnas"] for b in blocks if "pnas" in b]
    if len(pnas) > 1:
        raise ValueError("the paper's search is in more than one part of test 1")
    if pnas:
        numbers["pnas"] = pnas[0]
    joined: dict[str, Any] = {}
    for arrays in figures or []:
        joined.update(arrays)  # "truth" the same in every part; a threat model's in its own
    return _judged(numbers, joined)


def merge_perturbation(
    blocks: list[dict[str, Any]], figures: list[dict[str, Any]] | None = None
) -> TestResult:
    """Test 1 over an audit's units (its blocks of results.json, in image order): the
    searches' per-image numbers joined, then the findings, the convergence and the verdict
    drawn from them, as for one run over every image. ``figures``: the units' figure arrays,
    joined along the images (the paper's search: ``[checkpoints, images, ...]``)."""
    first = blocks[0]
    weights = [_images(b) for b in blocks]
    numbers = _settings(blocks)
    per_threat: dict[str, Any] = {}
    for threat, block in first["threat_models"].items():
        parts = [b["threat_models"][threat] for b in blocks]
        rows = []
        for k, row in enumerate(block["results"]):
            merged_row: dict[str, Any] = {"eps": row["eps"]}
            for key in row:
                if key != "eps":
                    merged_row[key] = _merged_record([p["results"][k][key] for p in parts], weights)
            rows.append(merged_row)
        amplification: dict[str, Any] = {}
        for role in ROLES:
            values = [p["amplification"][role] for p in parts]
            amplification[role] = (
                None if any(v is None for v in values) else [a for v in values for a in v]
            )
        amplification["method"] = agreed([p["amplification"]["method"] for p in parts], "method")
        per_threat[threat] = {
            "eps": agreed([p["eps"] for p in parts], "eps"),
            "normalisation": block["normalisation"],
            "results": rows,
            "amplification": amplification,
            "passes": {role: sum(p["passes"][role] for p in parts) for role in block["passes"]},
        }
        if "masking" in block:
            per_threat[threat]["masking"] = {
                "seeds": [s for p in parts for s in p["masking"]["seeds"]],
                "passes": sum(p["masking"]["passes"] for p in parts),
            }
    numbers["threat_models"] = per_threat
    if "pnas" in first:
        numbers["pnas"] = _merged_pnas([b["pnas"] for b in blocks], weights)
    joined = (
        {}
        if figures is None
        else _joined_arrays(figures, lambda path: 1 if path[:1] == ("pnas",) else 0)
    )
    return _judged(numbers, joined)


def _images(block: dict[str, Any]) -> int:
    """How many images a unit's block covers."""
    threat = next(iter(block["threat_models"].values()))
    return len(threat["results"][0]["network"]["size"])


def _joined_arrays(parts: list[Any], image_axis: Callable[[tuple[str, ...]], int]) -> Any:
    """Figure structures of the units (the same keys) joined: arrays along their image axis
    (by the key path), per-image lists one after the other."""

    def join(values: list[Any], path: tuple[str, ...]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {key: join([v[key] for v in values], (*path, key)) for key in first}
        if isinstance(first, list):
            return [item for v in values for item in v]
        return np.concatenate([np.asarray(v) for v in values], axis=image_axis(path))

    return join(parts, ())
