"""Worst-case perturbation searches against a reconstruction map ``f(y)``.

Two threat models: the *image* domain (``e = A r`` for an image perturbation ``r``, budget
``||r|| <= eps ||x||``) and the *measurement* domain (``e`` itself, ``||e|| <= eps ||y||``).
Two searches, with exact autograd through ``f`` and ``A``:

* :func:`budget_search` -- projected Adam on the ball, several seeded restarts, the worst per
  image kept, warm starts across an increasing ``eps`` grid. For networks without gradients it
  runs the same loop on an SPSA gradient estimate (Rademacher directions, two queries each) and
  reports the query count (weaker evidence).
* :func:`pnas_search` -- the algorithm of Antun et al. (PNAS 2020): heavy-ball gradient ascent
  ``v <- momentum v + step grad Q(r)``, ``r <- r + v`` on
  ``Q(r) = 1/2 ||f(y + A r) - f(y)||^2 / ||f(y)||^2 - lam/2 ||r||^2 / ||x||^2`` (both terms
  made scale free), from ``r0 = c U[0, 1)``, stopping on iterations, ``||r||`` or the output
  change, with the iterates at increasing norms kept as ``r1 < r2 < r3``.

Every random draw comes from a ``torch.Generator`` seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from reconstruction.batch import norms, per_item
from reconstruction.operators import LinearOperator
from reconstruction.operators.base import complex_dtype

__all__ = [
    "BudgetResult",
    "PnasResult",
    "ThreatModel",
    "budget_search",
    "output_change",
    "pnas_search",
    "relative_norm",
]

Recon = Callable[[Tensor], Tensor]
ThreatModel = Literal["image", "measurement"]
#: SPSA: Rademacher directions per gradient estimate, and the probe size relative to the radius
SPSA_DIRECTIONS = 8
SPSA_PROBE = 0.05


def relative_norm(t: Tensor, ref: Tensor) -> Tensor:
    """``||t_b|| / ||ref_b||`` per batch item."""
    return norms(t) / norms(ref)


def output_change(perturbed: Tensor, clean: Tensor, roi: Tensor | None = None) -> Tensor:
    """``||f(y + e) - f(y)|| / ||f(y)||`` per image, optionally weighted by ``roi`` [H, W]."""
    diff = perturbed - clean
    if roi is not None:
        diff = diff * roi
        clean = clean * roi
    return norms(diff) / norms(clean).clamp_min(1e-12)


def _noise_like(t: Tensor, gen: torch.Generator) -> Tensor:
    n = torch.randn(t.shape, generator=gen, dtype=t.dtype, device="cpu")
    return n.to(t.device)


def _project(u: Tensor) -> Tensor:
    """Onto the unit ball, per item."""
    return u / per_item(norms(u).clamp_min(1.0), u)


@dataclass
class BudgetResult:
    """The worst perturbation found per image at one ``eps``."""

    eps: float
    threat_model: ThreatModel
    #: image-domain ``r`` or measurement-domain ``e``, per image
    perturbation: Tensor
    #: ``e`` in measurement space (``A r`` for the image threat model)
    measurement_perturbation: Tensor
    #: ``||r|| / ||x||`` (image) or ``||e|| / ||y||`` (measurement) per image
    size: Tensor
    #: ``||e|| / ||y||`` per image (both threat models)
    measurement_size: Tensor
    #: ``||f(y + e) - f(y)|| / ||f(y)||`` per image (ROI-weighted when an ROI is given)
    change: Tensor
    #: the reconstruction ``f(y + e)``
    reconstruction: Tensor
    #: mean objective per iteration, one curve per restart
    loss_curves: list[list[float]] = field(default_factory=list)
    #: the change each restart reached, ``[restarts, B]`` (the spread across restarts)
    restart_changes: list[list[float]] = field(default_factory=list)
    #: forward queries spent (black-box SPSA), else ``None``
    queries: int | None = None


class _Setup:
    def __init__(
        self, f: Recon, op: LinearOperator, x: Tensor, y: Tensor, threat: ThreatModel
    ) -> None:
        self.f, self.op, self.threat = f, op, threat
        self.y = y
        with torch.no_grad():
            self.clean = f(y)
        if threat == "image":
            self.shape = x.shape
            self.dtype = complex_dtype(x.dtype) if op.in_complex else x.dtype
            self.scale = norms(x)
        else:
            self.shape = y.shape
            self.dtype = y.dtype
            self.scale = norms(y)
        self.numel = math.prod(self.shape[1:])

    def measurement(self, p: Tensor) -> Tensor:
        return self.op.A(p) if self.threat == "image" else p


def _objective(s: _Setup, p: Tensor, roi: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-image squared relative change and the reconstruction."""
    out = s.f(s.y + s.measurement(p))
    return output_change(out, s.clean, roi).square(), out


def _spsa_gradient(
    s: _Setup, u: Tensor, radius: Tensor, roi: Tensor | None, gen: torch.Generator
) -> Tensor:
    grad = torch.zeros_like(u)
    probe = SPSA_PROBE
    with torch.no_grad():
        for _ in range(SPSA_DIRECTIONS):
            delta = torch.randint(0, 2, u.shape, generator=gen).to(u.device) * 2.0 - 1.0
            delta = (delta / math.sqrt(s.numel)).to(u.dtype)
            plus, _ = _objective(s, _project(u + probe * delta) * radius, roi)
            minus, _ = _objective(s, _project(u - probe * delta) * radius, roi)
            grad += per_item((plus - minus) / (2 * probe), u) * delta.conj()
    return grad / SPSA_DIRECTIONS


def budget_search(
    f: Recon,
    op: LinearOperator,
    x: Tensor,
    y: Tensor,
    *,
    threat_model: ThreatModel,
    eps: Sequence[float],
    restarts: int,
    iterations: int,
    step_size: float,
    seed: int,
    roi: Tensor | None = None,
    gradients: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[BudgetResult]:
    """Worst-case perturbations for each ``eps`` (increasing), per image.

    The search variable ``u`` lives in the unit ball and ``r = u * eps * ||x_b||`` (or
    ``e = u * eps * ||y_b||``), so one learning rate (``step_size / sqrt(n)`` per coordinate)
    fits every image. Restart 0 warm-starts from the previous ``eps``'s worst case; the others
    start from seeded Gaussian directions at half the radius. ``progress`` is called with the
    number of iterations done after each iteration."""
    s = _Setup(f, op, x, y, threat_model)
    gen = torch.Generator().manual_seed(seed)
    results: list[BudgetResult] = []
    warm: Tensor | None = None
    lr = step_size / math.sqrt(s.numel)
    for e in eps:
        radius = (s.scale * e).reshape(-1, *([1] * (len(s.shape) - 1)))
        best_u = torch.zeros(s.shape, dtype=s.dtype, device=y.device)
        best_change = torch.full((s.shape[0],), -1.0, device=y.device)
        curves: list[list[float]] = []
        per_restart: list[list[float]] = []
        queries = 0
        for k in range(restarts):
            if k == 0 and warm is not None:
                u0 = warm.clone()
            else:
                u0 = _noise_like(best_u, gen)
                u0 = 0.5 * u0 / per_item(norms(u0), u0)
            u = u0.detach().requires_grad_(True)
            optimiser = torch.optim.Adam([u], lr=lr)
            curve: list[float] = []
            restart_best = torch.full((s.shape[0],), -1.0, device=y.device)
            for _ in range(iterations):
                optimiser.zero_grad()
                if gradients:
                    value, _ = _objective(s, u * radius, roi)
                    (-value.sum()).backward()
                else:
                    with torch.no_grad():
                        value, _ = _objective(s, u * radius, roi)
                    u.grad = -_spsa_gradient(s, u.detach(), radius, roi, gen)
                    queries += 1 + 2 * SPSA_DIRECTIONS
                change = value.detach().sqrt()
                better = change > best_change
                best_change = torch.where(better, change, best_change)
                best_u = torch.where(per_item(better, best_u), u.detach(), best_u)
                restart_best = torch.maximum(restart_best, change)
                curve.append(float(value.detach().mean()))
                optimiser.step()
                with torch.no_grad():
                    u.copy_(_project(u))
                if progress is not None:
                    progress(1)
            curves.append(curve)
            per_restart.append(restart_best.tolist())
        warm = best_u
        with torch.no_grad():
            p = best_u * radius
            e_meas = s.measurement(p)
            out = f(y + e_meas)
            change = output_change(out, s.clean, roi)
        results.append(
            BudgetResult(
                eps=float(e),
                threat_model=threat_model,
                perturbation=p,
                measurement_perturbation=e_meas,
                size=norms(p) / s.scale,
                measurement_size=relative_norm(e_meas, y),
                change=change,
                reconstruction=out,
                loss_curves=curves,
                restart_changes=per_restart,
                queries=queries if not gradients else None,
            )
        )
    return results


@dataclass
class PnasResult:
    """The paper's search: ``r1 < r2 < r3`` per image and the run's diagnostics."""

    #: ``[checkpoints, B, ...]`` image perturbations at increasing norms
    perturbations: Tensor
    #: ``||r_k|| / ||x||`` per checkpoint and image ``[checkpoints, B]``
    sizes: Tensor
    #: ``||f(y + A r_k) - f(y)|| / ||f(y)||`` ``[checkpoints, B]``
    changes: Tensor
    #: ``f(y + A r_k)`` ``[checkpoints, B, H, W]``
    reconstructions: Tensor
    #: the iteration at which each checkpoint was taken ``[checkpoints, B]``
    iterations: Tensor
    #: mean ``Q`` per iteration
    loss_curve: list[float]
    stop_reason: str


def pnas_search(
    f: Recon,
    op: LinearOperator,
    x: Tensor,
    y: Tensor,
    *,
    iterations: int,
    lam: float,
    momentum: float,
    step: float,
    init_scale: float,
    max_norm: float,
    max_output_change: float,
    checkpoints: Sequence[float],
    seed: int,
    roi: Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> PnasResult:
    """Heavy-ball ascent of ``Q`` (see the module documentation); image threat model.

    Checkpoint ``k`` is the first iterate whose ``||r|| / ||x||`` reaches
    ``checkpoints[k] * max_norm`` (the final iterate when the run stops before that), so the
    kept perturbations are ordered by norm: the paper's ``r1 < r2 < r3``."""
    s = _Setup(f, op, x, y, "image")
    gen = torch.Generator().manual_seed(seed)
    u0 = torch.rand(s.shape, generator=gen, dtype=torch.float64).to(y.device)
    u = (init_scale * u0 / per_item(s.scale, u0)).to(s.dtype)
    v = torch.zeros_like(u)
    b = s.shape[0]
    levels = torch.tensor(sorted(checkpoints), dtype=torch.float64) * max_norm
    kept = torch.zeros((len(levels), *s.shape), dtype=s.dtype, device=y.device)
    taken = torch.full((len(levels), b), -1, dtype=torch.long)
    curve: list[float] = []
    reason = f"iteration limit ({iterations})"
    scale = per_item(s.scale, u).to(y.device)
    for it in range(1, iterations + 1):
        uu = u.detach().requires_grad_(True)
        change2, _ = _objective(s, uu * scale, roi)
        q = 0.5 * change2 - 0.5 * lam * norms(uu).square()
        q.sum().backward()
        assert uu.grad is not None
        with torch.no_grad():
            v = momentum * v + step * uu.grad
            u = u + v
        curve.append(float(q.detach().mean()))
        size = norms(u).double().cpu()
        for k, level in enumerate(levels):
            fresh = (taken[k] < 0) & (size >= level)
            if bool(fresh.any()):
                kept[k][fresh.to(y.device)] = u[fresh.to(y.device)]
                taken[k][fresh] = it
        if progress is not None:
            progress(1)
        if bool((size >= max_norm).all()):
            reason = f"||r|| reached {max_norm:g} ||x||"
            break
        if bool((change2.detach().sqrt() >= max_output_change).all()):
            reason = f"output change reached {max_output_change:g}"
            break
    for k in range(len(levels)):
        missing = taken[k] < 0
        if bool(missing.any()):
            kept[k][missing.to(y.device)] = u[missing.to(y.device)]
            taken[k][missing] = it
    with torch.no_grad():
        perturbations = kept * scale
        recons = torch.stack([f(y + op.A(p)) for p in perturbations])
        changes = torch.stack([output_change(r, s.clean, roi) for r in recons])
        sizes = torch.stack([norms(p) / s.scale for p in perturbations])
    return PnasResult(
        perturbations=perturbations,
        sizes=sizes,
        changes=changes,
        reconstructions=recons,
        iterations=taken,
        loss_curve=curve,
        stop_reason=reason,
    )
