"""Worst-case perturbation searches against a reconstruction map ``f(y)``.

Two threat models: the *image* domain (``e = A r`` for an image perturbation ``r``, budget
``||r|| <= eps ||x||``) and the *measurement* domain (``e`` itself, ``||e|| <= eps ||y||``).
Two searches, with exact autograd through ``f`` and ``A``:

* :func:`budget_search` -- a projected ascent of the relative output change on the ball, per
  image, for every ``eps`` of a grid. The search variable ``u`` lives in the unit ball
  (``r = u eps ||x||``), so one step rule fits every image and every ``eps``. Its starts run
  side by side along the batch dimension: the top right-singular vector of the Jacobian at the
  clean input (the locally worst direction, by Lanczos on ``J^T J`` with Jacobian-vector and
  vector-Jacobian products, its sign chosen by the larger change at the radius), seeded
  random directions at the full radius, and the best few
  points of the neighbouring ``eps`` (warm starts carried down the grid from the largest
  ball, where a response hidden beyond a norm is easiest to reach, then carried back up).
  Steps are normalised gradients starting at ``step_size`` times the radius, with
  momentum, halved (and restarted from the best point) when a start stops improving -- the
  step rule of Auto-PGD (Croce & Hein 2020) -- or Adam steps (the published replays). A start
  stops when its best change improved by less than ``plateau_tolerance`` over the last
  ``plateau_window`` iterations (it *plateaued*), or at the ``iterations`` cap (it did not).
  For networks without gradients the same loop runs on an SPSA estimate (Rademacher
  directions, two queries each) and reports the query count (weaker evidence).
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
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from reconstruction.batch import dots, norms, per_item
from reconstruction.operators import LinearOperator
from reconstruction.operators.base import complex_dtype

__all__ = [
    "BudgetResult",
    "BudgetSearch",
    "PnasResult",
    "SearchSettings",
    "ThreatModel",
    "budget_search",
    "output_change",
    "pnas_search",
    "relative_norm",
]

Recon = Callable[[Tensor], Tensor]
ThreatModel = Literal["image", "measurement"]
SearchMethod = Literal["normalized-gradient", "adam"]
#: ``change``: maximise ``||f(y + e) - f(y)|| / ||f(y)||`` (the paper's); ``error``: maximise
#: ``||f(y + e) - x|| / ||x||`` (Genzel et al.'s untargeted attack)
Objective = Literal["change", "error"]
#: SPSA: Rademacher directions per gradient estimate, and the probe size relative to the radius
SPSA_DIRECTIONS = 8
SPSA_PROBE = 0.05
#: normalised-gradient steps: momentum weight of the new point (Auto-PGD's 0.75)
MOMENTUM = 0.75
#: Adam's moment decay rates
ADAM_BETAS = (0.9, 0.999)
#: central finite-difference step (relative to the norm of the clean input) for a Jacobian-vector
#: product when the network has no second derivative
FD_STEP = 1e-3


def relative_norm(t: Tensor, ref: Tensor) -> Tensor:
    """``||t_b|| / ||ref_b||`` per batch item."""
    return norms(t) / norms(ref)


def output_change(perturbed: Tensor, clean: Tensor, roi: Tensor | None = None) -> Tensor:
    """``||f(y + e) - f(y)|| / ||f(y)||`` per image, optionally weighted by ``roi`` (``[H, W]``
    or one weight map per image ``[B, H, W]``)."""
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


def _unit(u: Tensor) -> Tensor:
    """Onto the unit sphere, per item."""
    return u / per_item(norms(u).clamp_min(1e-30), u)


@dataclass(frozen=True)
class SearchSettings:
    """How hard :func:`budget_search` looks (the protocol's ``perturbation.budget`` less its
    ``eps`` grid)."""

    #: starts per ``eps``, run side by side: warm starts, the Jacobian's direction, random ones
    restarts: int = 6
    #: best points of one ``eps`` carried to the next as warm starts
    keep: int = 3
    #: the cap on iterations per start
    iterations: int = 100
    #: no start stops on a plateau before this many iterations
    min_iterations: int = 10
    #: the first step as a fraction of the radius (Adam: its learning rate, per coordinate,
    #: times ``1 / sqrt(n)``)
    step_size: float = 0.25
    method: SearchMethod = "normalized-gradient"
    #: a start has plateaued when its best change grew by less than ``plateau_tolerance``
    #: (relative) over the last ``plateau_window`` iterations
    plateau_window: int = 10
    plateau_tolerance: float = 0.01
    #: start from the top right-singular vector of the Jacobian at the clean input
    jacobian_start: bool = True
    #: ``J^T J v`` products for it: the size of its Lanczos basis (the name kept from the power
    #: iteration it replaced: a protocol field)
    power_iterations: int = 6
    #: after the pass down the grid (largest ``eps`` first, each warm-started from the larger
    #: one's best points), carry each ``eps``'s best point up to the next larger one and search
    #: again from there
    both_ways: bool = True

    @property
    def patience(self) -> int:
        """Iterations without improvement after which a normalised-gradient step is halved."""
        return max(2, self.plateau_window // 2)


@dataclass
class BudgetResult:
    """The worst perturbation found per image at one ``eps``, and how the search got there."""

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
    #: ``||f(y + e) - x|| / ||x||`` per image (the error against the ground truth)
    error: Tensor
    #: the reconstruction ``f(y + e)``
    reconstruction: Tensor
    #: iterations the image's longest start ran at this ``eps`` (the pass down included) ``[B]``
    iterations: Tensor
    #: every start of the image stopped on a plateau, none at the cap ``[B]``
    plateaued: Tensor
    #: ``1 - second best / best`` over the starts' changes (and the point carried from the
    #: neighbouring ``eps``, when the search goes both ways): how far the routes disagree ``[B]``
    restart_spread: Tensor
    #: forward+backward passes (black box: forward queries) spent at this ``eps``, all images
    passes: int
    #: the mean over images of the best change so far, per iteration, one curve per start
    loss_curves: list[list[float]] = field(default_factory=list)
    #: the change each start reached, ``[starts, B]``
    restart_changes: list[list[float]] = field(default_factory=list)
    #: the starts in order (``warm``, ``jacobian``, ``random``)
    starts: list[str] = field(default_factory=list)
    #: forward queries spent (black-box SPSA), else ``None``
    queries: int | None = None


@dataclass
class BudgetSearch:
    """:func:`budget_search`'s answer: one result per ``eps`` and the local amplification."""

    results: list[BudgetResult]
    #: the Jacobian's largest singular value at the clean input in relative units,
    #: ``(||J e|| / ||f(y)||) / (||e|| / ||y||)`` (image threat model: per ``||r|| / ||x||``),
    #: per image; ``None`` without gradients or when not asked for
    amplification: Tensor | None
    #: how the Jacobian-vector products were taken (``autograd`` or ``finite differences``)
    jacobian_method: str | None
    #: forward+backward passes in all (Jacobian power iterations count two each)
    passes: int


class _Problem:
    """The map ``u -> f(y + M(u * radius))`` per item; items are ``(start, image)`` pairs
    whose image is ``owner[item]``."""

    def __init__(
        self,
        f: Recon,
        op: LinearOperator,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        roi: Tensor | None,
        objective: Objective = "change",
    ) -> None:
        self.f, self.op, self.threat, self.y = f, op, threat, y
        with torch.no_grad():
            self.clean = f(y)
        #: what the search moves away from: the clean reconstruction, or the ground truth
        self.target = self.clean if objective == "change" else x.abs().to(self.clean.dtype)
        if threat == "image":
            self.shape = tuple(x.shape)
            self.dtype = complex_dtype(x.dtype) if op.in_complex else x.dtype
            self.scale = norms(x)
        else:
            self.shape = tuple(y.shape)
            self.dtype = y.dtype
            self.scale = norms(y)
        self.numel = math.prod(self.shape[1:])
        self.roi = roi
        self.per_image_roi = roi is not None and roi.ndim == 3

    def measurement(self, p: Tensor) -> Tensor:
        return self.op.A(p) if self.threat == "image" else p

    def weights(self, owner: Tensor) -> Tensor | None:
        if self.roi is None or not self.per_image_roi:
            return self.roi
        return self.roi[owner]

    def change2(self, u: Tensor, owner: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        """Squared relative change per item, and the reconstruction."""
        p = u * per_item(radius[owner], u)
        out = self.f(self.y[owner] + self.measurement(p))
        return output_change(out, self.target[owner], self.weights(owner)).square(), out

    def zeros(self, n: int) -> Tensor:
        return torch.zeros((n, *self.shape[1:]), dtype=self.dtype, device=self.y.device)

    def random(self, n: int, gen: torch.Generator) -> Tensor:
        return _unit(_noise_like(self.zeros(n), gen))


def _spsa_gradient(
    prob: _Problem, u: Tensor, owner: Tensor, radius: Tensor, gen: torch.Generator
) -> Tensor:
    grad = torch.zeros_like(u)
    with torch.no_grad():
        for _ in range(SPSA_DIRECTIONS):
            delta = torch.randint(0, 2, u.shape, generator=gen).to(u.device) * 2.0 - 1.0
            delta = (delta / math.sqrt(prob.numel)).to(u.dtype)
            plus, _ = prob.change2(_project(u + SPSA_PROBE * delta), owner, radius)
            minus, _ = prob.change2(_project(u - SPSA_PROBE * delta), owner, radius)
            grad += per_item((plus - minus) / (2 * SPSA_PROBE), u) * delta.conj()
    return grad / SPSA_DIRECTIONS


class _Chunks:
    """How many of a search's items (starts x images) go through one forward and backward pass
    of the network: all of them, unless the device runs out of memory; then half as many, and
    so on, for the rest of the search. Each item's gradient is its own (the items are
    independent; a network in eval mode mixes nothing across the batch), so the chunks change
    how the work is cut, not what is computed."""

    def __init__(self) -> None:
        self.size: int | None = None  # None: the whole batch

    def value_and_grad(
        self, prob: _Problem, u: Tensor, owner: Tensor, radius: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Each item's squared relative change and its gradient with respect to ``u``."""
        n = u.shape[0]
        while True:
            size = n if self.size is None else min(self.size, n)
            try:
                return self._in_chunks(prob, u, owner, radius, size)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self.size = (size + 1) // 2
                if u.is_cuda:
                    torch.cuda.empty_cache()

    @staticmethod
    def _in_chunks(
        prob: _Problem, u: Tensor, owner: Tensor, radius: Tensor, size: int
    ) -> tuple[Tensor, Tensor]:
        values, grads = [], []
        for start in range(0, u.shape[0], size):
            part = u[start : start + size].detach().requires_grad_(True)
            value, _ = prob.change2(part, owner[start : start + size], radius)
            (grad,) = torch.autograd.grad(value.sum(), part)
            values.append(value.detach())
            grads.append(grad)
        if len(values) == 1:
            return values[0], grads[0]
        return torch.cat(values), torch.cat(grads)


@dataclass
class _Ascent:
    """Where a batch of starts ended: best point and change per item, and how."""

    best_u: Tensor
    best: Tensor
    iterations: Tensor
    plateaued: Tensor
    curves: list[list[float]]
    passes: int


def _ascend(
    prob: _Problem,
    u0: Tensor,
    owner: Tensor,
    radius: Tensor,
    cfg: SearchSettings,
    *,
    gradients: bool,
    gen: torch.Generator,
    progress: Callable[[int], None] | None,
    slots: int,
    chunks: _Chunks,
) -> _Ascent:
    """Ascend from the starts ``u0`` (items ``[N, ...]``), each item until it plateaus or
    reaches the cap; items that are done leave the batch (``chunks``: how many items one pass
    of the network takes)."""
    n = u0.shape[0]
    device = u0.device
    u = _project(u0.clone())
    u_prev = u.clone()
    best_u = u.clone()
    best = torch.full((n,), -1.0, device=device)
    step = torch.full((n,), cfg.step_size, device=device)
    since = torch.zeros(n, dtype=torch.long, device=device)
    iters = torch.zeros(n, dtype=torch.long, device=device)
    plateaued = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    history: list[Tensor] = []
    adam_m = torch.zeros_like(u)
    adam_v = torch.zeros(u.shape, dtype=u.real.dtype, device=device)
    lr = cfg.step_size / math.sqrt(prob.numel)
    passes = 0
    for it in range(cfg.iterations):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        # the images' tensors by a view while every start is active (the common case)
        sel: slice | Tensor = slice(None) if idx.numel() == n else idx
        ui = u[sel].detach()
        if gradients:
            value, grad = chunks.value_and_grad(prob, ui, owner[idx], radius)
            passes += idx.numel()
        else:
            with torch.no_grad():
                value, _ = prob.change2(ui, owner[idx], radius)
            grad = _spsa_gradient(prob, ui.detach(), owner[idx], radius, gen)
            passes += idx.numel() * (1 + 2 * SPSA_DIRECTIONS)
        change = value.detach().sqrt()
        iters[idx] += 1
        better = change > best[idx]
        improved = idx[better]
        best[improved] = change[better]
        best_u[improved] = ui.detach()[better]
        since[idx] = torch.where(better, 0, since[idx] + 1)
        history.append(best.clone())
        with torch.no_grad():
            if cfg.method == "adam":
                g = torch.view_as_real(grad) if grad.is_complex() else grad
                m = adam_m[sel]
                m_real = torch.view_as_real(m) if m.is_complex() else m
                m_real.mul_(ADAM_BETAS[0]).add_((1 - ADAM_BETAS[0]) * g)
                v = adam_v[sel]
                g2 = g.square().sum(-1) if grad.is_complex() else g.square()
                v.mul_(ADAM_BETAS[1]).add_((1 - ADAM_BETAS[1]) * g2)
                t = iters[idx].to(torch.float32)
                m_hat = m / per_item(1 - ADAM_BETAS[0] ** t, m)
                v_hat = v / per_item(1 - ADAM_BETAS[1] ** t, v)
                adam_m[sel], adam_v[sel] = m, v
                u[sel] = _project(ui.detach() + lr * m_hat / (v_hat.sqrt() + 1e-8))
            else:
                halve = since[idx] >= cfg.patience
                restart = idx[halve]
                step[restart] = step[restart] / 2
                since[restart] = 0
                if bool(halve.any()):
                    base = torch.where(per_item(halve, ui), best_u[sel], ui.detach())
                    prev = torch.where(per_item(halve, ui), best_u[sel], u_prev[sel])
                else:
                    base, prev = ui.detach(), u_prev[sel]
                z = _project(base + per_item(step[idx], grad) * _unit(grad))
                fresh = per_item((iters[idx] == 1) | halve, z)
                moved = _project(base + MOMENTUM * (z - base) + (1 - MOMENTUM) * (base - prev))
                u_prev[sel] = base
                u[sel] = torch.where(fresh, z, moved)
        if it + 1 >= max(cfg.min_iterations, cfg.plateau_window + 1):
            old = history[it - cfg.plateau_window]
            flat = best[idx] <= old[idx] * (1 + cfg.plateau_tolerance)
            plateaued[idx[flat]] = True
            active[idx[flat]] = False
        if progress is not None:
            progress(1)
    if history and len(history) > cfg.plateau_window:
        # a start that ran to the cap may still have flattened out in its last window
        old = history[-1 - cfg.plateau_window]
        plateaued |= best <= old * (1 + cfg.plateau_tolerance)
    curves = []
    if history:
        stacked = torch.stack(history).clamp_min(0.0)  # [iterations, N]
        per_slot = stacked.reshape(len(history), slots, -1)
        curves = [[float(v) for v in per_slot[:, k].mean(1)] for k in range(slots)]
    return _Ascent(best_u, best.clamp_min(0.0), iters, plateaued, curves, passes)


def _orthogonal(z: Tensor, basis: list[Tensor]) -> Tensor:
    """``z`` less its components along an orthonormal ``basis``, per item (Gram-Schmidt)."""
    for prev in basis:
        z = z - per_item(dots(prev, z), z) * prev
    return z


def _top_singular(
    prob: _Problem, iterations: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, str]:
    """The Jacobian of ``u -> f(y + M(u ||x||))`` at ``u = 0``: its top right-singular vector
    per image and the singular value divided by ``||f(y)||`` (relative units), by Lanczos on
    ``J^T J`` (``iterations`` products, a Krylov basis kept orthonormal, Rayleigh-Ritz on it)
    with exact products (double backward), or central differences for ``J v`` where the
    network has no second derivative.

    Not power iteration: power iteration converges at the ratio of the two largest singular
    values, which is close to 1 for every network that passes its input through (a residual
    or data-consistent network is near the identity or a projection on the sampled band, a
    flat spectrum), so a response that lifts one singular value a little above the rest, a
    saturating switch among them, stays hidden after a few products. A Krylov method is
    shift-invariant: the flat part costs it nothing, and a direction that lifts the spectrum
    by a low-rank amount lies in a basis of a few products."""
    b = prob.shape[0]
    u0 = prob.zeros(b).requires_grad_(True)
    value = prob.f(prob.y + prob.measurement(u0 * per_item(prob.scale, u0)))
    v = prob.random(b, gen)

    def vjp(w: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(value, u0, w, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u0) if g is None else g

    def jvp_fd(d: Tensor) -> Tensor:
        step = FD_STEP * d * per_item(prob.scale, d)
        with torch.no_grad():
            out_p = prob.f(prob.y + prob.measurement(step))
            out_m = prob.f(prob.y - prob.measurement(step))
        return (out_p - out_m) / (2 * FD_STEP)

    method = "autograd"
    try:
        w = torch.zeros_like(value, requires_grad=True)
        (g_w,) = torch.autograd.grad(value, u0, w, create_graph=True, allow_unused=True)
        if g_w is None:
            raise RuntimeError("the output does not depend on the input")

        def jvp(d: Tensor) -> Tensor:
            (jv,) = torch.autograd.grad(g_w, w, d, retain_graph=True)
            return jv

        jvp(v)
    except RuntimeError:
        method = "finite differences"
        jvp = jvp_fd
    basis: list[Tensor] = []
    products: list[Tensor] = []
    q = v
    for _ in range(iterations):
        basis.append(q)
        products.append(vjp(jvp(q)).detach())
        # twice: the basis stays orthonormal in float32
        z = _orthogonal(_orthogonal(products[-1], basis), basis)
        spent = per_item(norms(z) <= 1e-6 * norms(products[-1]), z)
        if bool(spent.any()):
            # an invariant subspace reached (the image's Jacobian has low rank): a fresh
            # direction (drawn only then, so the starts' random stream stays the same)
            z = torch.where(spent, _orthogonal(prob.random(b, gen), basis), z)
        q = _unit(z)
    k = len(basis)
    gram = torch.stack(
        [torch.stack([dots(basis[i], products[j]) for j in range(k)], -1) for i in range(k)], -2
    )
    _, vectors = torch.linalg.eigh(0.5 * (gram + gram.transpose(-2, -1)))
    top = vectors[..., -1]  # [B, k]: the Ritz vector's coordinates in the basis
    ritz = torch.zeros_like(basis[0])
    for i in range(k):
        ritz = ritz + per_item(top[:, i], basis[i]) * basis[i]
    v = _unit(ritz)
    sigma = norms(jvp(v)) / norms(prob.clean).clamp_min(1e-12)
    return v.detach(), sigma.detach(), method


def _signed(prob: _Problem, v: Tensor, images: Tensor, radius: Tensor) -> Tensor:
    """``v`` or ``-v``, per image, whichever changes the output more at the full radius: a
    singular vector has no sign, the network's response (a switch, a clipped path) may have."""
    with torch.no_grad():
        plus, _ = prob.change2(v, images, radius)
        minus, _ = prob.change2(-v, images, radius)
    return torch.where(per_item(plus >= minus, v), v, -v)


def budget_search(
    f: Recon,
    op: LinearOperator,
    x: Tensor,
    y: Tensor,
    *,
    threat_model: ThreatModel,
    eps: Sequence[float],
    settings: SearchSettings,
    seed: int,
    roi: Tensor | None = None,
    objective: Objective = "change",
    gradients: bool = True,
    initial: Sequence[Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BudgetSearch:
    """Worst-case perturbations for each ``eps`` (increasing), per image; see the module
    documentation for the search. ``initial``: one more start per ``eps`` (``[B, ...]`` points
    of the unit ball, e.g. the worst cases of another objective). ``progress`` is called with
    the number of iterations done after each iteration of a batch of starts."""
    prob = _Problem(f, op, x, y, threat_model, roi, objective)
    gen = torch.Generator().manual_seed(seed)
    b = prob.shape[0]
    images = torch.arange(b, device=y.device)
    passes = [0] * len(eps)
    jac: Tensor | None = None
    amplification: Tensor | None = None
    jacobian_method: str | None = None
    extra = 0
    if gradients and settings.jacobian_start:
        jac, amplification, jacobian_method = _top_singular(prob, settings.power_iterations, gen)
        extra = b * (2 * settings.power_iterations + 3)
    ascend = partial(
        _ascend,
        prob,
        cfg=settings,
        gradients=gradients,
        gen=gen,
        progress=progress,
        chunks=_Chunks(),
    )
    m = len(eps)
    points: list[Tensor] = [torch.empty(0)] * m
    bests: list[Tensor] = [torch.empty(0)] * m
    iterations: list[Tensor] = [torch.empty(0)] * m
    plateaued: list[Tensor] = [torch.empty(0)] * m
    spreads: list[Tensor] = [torch.empty(0)] * m
    finals: list[Tensor] = [torch.empty(0)] * m
    curves: list[list[list[float]]] = [[] for _ in eps]
    per_start: list[list[list[float]]] = [[] for _ in eps]
    labels: list[list[str]] = [[] for _ in eps]
    warm: Tensor | None = None
    # down the grid: the largest ball first, where a response hidden beyond a norm is easiest
    # to reach, its best points warm-starting the smaller balls
    for k in reversed(range(m)):
        radius = prob.scale * eps[k]
        starts: list[Tensor] = []
        names: list[str] = []
        if initial is not None:
            starts.append(initial[k].to(prob.dtype))
            names.append("given")
        if warm is not None:
            n_warm = min(len(warm), settings.keep, max(settings.restarts - 1, 1))
            starts += [_unit(w) for w in warm[:n_warm]]
            names += ["warm"] * n_warm
        if jac is not None and len(starts) < settings.restarts:
            starts.append(_signed(prob, jac, images, radius))
            names.append("jacobian")
            passes[k] += 2 * b
        while len(starts) < settings.restarts:
            starts.append(prob.random(b, gen))
            names.append("random")
        n = len(starts)
        run = ascend(torch.cat(starts), images.repeat(n), radius, slots=n)
        values = run.best.reshape(n, b)
        found = run.best_u.reshape(n, *prob.shape)
        order = values.argsort(dim=0, descending=True)
        points[k] = found[order[0], images].clone()
        bests[k] = values[order[0], images].clone()
        iterations[k] = run.iterations.reshape(n, b).amax(0)
        plateaued[k] = run.plateaued.reshape(n, b).all(0)
        finals[k] = values
        warm = found[order[: min(settings.keep, n)], images]
        passes[k] += run.passes
        curves[k] = run.curves
        per_start[k] = values.tolist()
        labels[k] = names
    if settings.both_ways:
        # and back up: each ball's best point, scaled to the next larger one, searched again
        for k in range(1, m):
            run = ascend(_unit(points[k - 1]), images, prob.scale * eps[k], slots=1)
            gained = run.best > bests[k]
            bests[k][gained] = run.best[gained]
            points[k][gained] = run.best_u[gained]
            iterations[k] += run.iterations
            plateaued[k] &= run.plateaued
            passes[k] += run.passes
            finals[k] = torch.cat([finals[k], run.best[None]])
    for k in range(m):
        # agreement: how close the second best route (a start of this eps, or the point carried
        # from the neighbouring eps) came to the best
        if len(finals[k]) > 1:
            top2 = finals[k].topk(2, dim=0).values
            spreads[k] = 1.0 - top2[1] / top2[0].clamp_min(1e-12)
        else:
            spreads[k] = torch.full((b,), float("nan"), device=y.device)
    results = []
    for k, e in enumerate(eps):
        with torch.no_grad():
            p = points[k] * per_item(prob.scale * e, points[k])
            e_meas = prob.measurement(p)
            out = f(y + e_meas)
            change = output_change(out, prob.clean, prob.weights(images))
            error = output_change(out, x.abs().to(out.dtype))
        results.append(
            BudgetResult(
                eps=float(e),
                threat_model=threat_model,
                perturbation=p,
                measurement_perturbation=e_meas,
                size=norms(p) / prob.scale,
                measurement_size=relative_norm(e_meas, y),
                change=change,
                error=error,
                reconstruction=out,
                iterations=iterations[k].cpu(),
                plateaued=plateaued[k].cpu(),
                restart_spread=spreads[k].cpu(),
                passes=passes[k],
                loss_curves=curves[k],
                restart_changes=per_start[k],
                starts=labels[k],
                queries=None if gradients else passes[k],
            )
        )
    return BudgetSearch(results, amplification, jacobian_method, sum(passes) + extra)


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
    s = _Problem(f, op, x, y, "image", roi)
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
    images = torch.arange(b, device=y.device)
    for it in range(1, iterations + 1):
        uu = u.detach().requires_grad_(True)
        change2, _ = s.change2(uu, images, s.scale)
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
