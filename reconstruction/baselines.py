"""Compressed-sensing baselines: l1-wavelet and total-variation reconstruction, in torch.

Every instability verdict compares the network with one of these stable reconstructions from the
same measurements. They work with every operator of :mod:`reconstruction.operators`, batched over
images, on CPU and CUDA, deterministically, and they are **differentiable**: gradients flow through
the unrolled iterations, so the same perturbation search that attacks a network can attack the
baseline with the same budget (use ``max_iter=ATTACK_ITERATIONS`` there; see below).

Problems (``lam`` is *relative*: the weight is ``lam * ||A||^2 * data_scale(y, op)``, where
``data_scale`` is the largest magnitude of ``A^H y`` per image divided by ``||A||^2``, close to
the image's peak; so one value suits every modality and intensity scale, and for l1-wavelet
``lam`` is the soft threshold relative to that peak):

* ``l1_wavelet``: ``min_x 1/2 ||A x - y||^2 + lam ||W x||_1`` with an orthonormal periodic
  Daubechies wavelet ``W`` (db4, at least 3 levels by default; the coarsest approximation band is
  not penalised unless ``penalize_approximation=True``); FISTA with adaptive (gradient) restart
  and cycle spinning over ``CYCLE_SPINS`` wavelet shifts (see ``l1_wavelet_solve``).
  With ``sigma`` it solves the constrained basis-pursuit-denoising form
  ``min ||W x||_1 s.t. ||A x - y|| <= sigma`` (as SPGL1 does) by primal-dual iterations.
* ``total_variation``: ``min_x 1/2 ||A x - y||^2 + lam TV(x)``, isotropic TV (anisotropic with
  ``isotropic=False``), by Chambolle-Pock primal-dual iterations; with ``sigma`` the constrained
  form ``min TV(x) s.t. ||A x - y|| <= sigma``.

Each stops when every image's relative change per iteration falls below ``tol`` (checked every
``CHECK_EVERY`` iterations) or after ``max_iter`` iterations; ``x0`` warm-starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from reconstruction.batch import norms, per_item
from reconstruction.operators import LinearOperator
from reconstruction.operators.base import real_dtype
from reconstruction.wavelets import Wavelet2D

__all__ = [
    "ATTACK_ITERATIONS",
    "DEFAULTS",
    "STABILITY_CONSTANT",
    "SolveInfo",
    "data_scale",
    "l1_wavelet",
    "l1_wavelet_solve",
    "total_variation",
    "total_variation_solve",
]

Transform = Callable[[Tensor], Tensor]

#: How often (in iterations) the stopping rule is evaluated; each check synchronises a GPU.
CHECK_EVERY = 10

#: Shifts the l1-wavelet solver cycles through (see ``l1_wavelet_solve``); 1 turns it off.
CYCLE_SPINS = 2

#: Empirical stability: for measurement perturbations of relative size ``eps`` (random, or found
#: by 5 steps of projected gradient ascent through ``ATTACK_ITERATIONS`` unrolled iterations),
#: the relative change of a baseline's output stayed below ``STABILITY_CONSTANT * eps``. Measured
#: at eps = 1 % on 64x64 ellipses (tests/reconstruction/test_baselines.py): random 0.5-3.2 eps,
#: gradient-found 3-12.6 eps (largest: l1-wavelet, 4-coil MRI at 30 % lines).
STABILITY_CONSTANT = 15.0

#: Iterations to unroll when a baseline is attacked (differentiated through): half the clean
#: default. Measured on Shepp-Logan 256x256 at 25 % variable density: l1-wavelet within 0.1 dB
#: of its converged PSNR, TV within 1.2 dB (50 iterations: 1.5 and 12 dB short);
#: tests/reconstruction/test_baselines.py keeps both within 2 dB.
ATTACK_ITERATIONS = 100


@dataclass(frozen=True)
class Defaults:
    """Per-modality defaults, chosen by measurement (benchmarks/tune_baselines.py)."""

    l1_lam: float
    tv_lam: float
    max_iter: int
    #: ratio of the dual to the primal step of TV's primal-dual iterations
    tv_balance: float


#: Keyed by the operator class name; the fallback is ``"default"``.
DEFAULTS: dict[str, Defaults] = {
    "SingleCoilMRI": Defaults(l1_lam=0.002, tv_lam=0.001, max_iter=200, tv_balance=0.01),
    "MultiCoilMRI": Defaults(l1_lam=0.002, tv_lam=0.001, max_iter=200, tv_balance=0.001),
    "ParallelBeamCT": Defaults(l1_lam=0.002, tv_lam=0.001, max_iter=300, tv_balance=0.001),
    "default": Defaults(l1_lam=0.002, tv_lam=0.001, max_iter=200, tv_balance=0.01),
}


def _defaults(op: LinearOperator, solver: str) -> Defaults:
    """The operator's defaults; the solvers reconstruct 2-D images only."""
    if len(op.in_shape) != 2:
        raise ValueError(f"{solver} needs 2-D images, the operator takes {op.in_shape}")
    return DEFAULTS.get(type(op).__name__, DEFAULTS["default"])


@dataclass(frozen=True)
class SolveInfo:
    """How a solve ended: iterations run, whether every image met the tolerance, and (FISTA)
    how many momentum restarts happened, summed over the images."""

    iterations: int
    converged: bool
    restarts: int = 0


# ----------------------------------------------------------------------------- helpers
def _initial(y: Tensor, op: LinearOperator, x0: Tensor | None) -> Tensor:
    """The warm start ``x0``, else ``A_dagger y`` where that is a direct formula (zero-filled
    MRI, FBP), else ``A^H y / ||A||^2``."""
    dtype = op.image_dtype(y.dtype)
    if x0 is not None:
        if tuple(x0.shape) != (y.shape[0], *op.in_shape):
            raise ValueError(
                f"x0 must have shape {[y.shape[0], *op.in_shape]}, got {list(x0.shape)}"
            )
        return x0.to(dtype)
    start: Tensor = (
        op.A_dagger(y) if op.dagger_is_direct else op.A_adjoint(y) / op.norm_bound() ** 2
    )
    return start.to(dtype)


def data_scale(y: Tensor, op: LinearOperator) -> Tensor:
    """``max |A^H y| / ||A||^2`` per image (``||A||`` from ``op.norm_bound()``): the intensity
    scale the relative ``lam`` refers to, close to the image's peak intensity."""
    back = op.A_adjoint(y)
    peak = back.abs().reshape(back.shape[0], -1).amax(dim=1)
    return peak / op.norm_bound() ** 2


def _soft(c: Tensor, threshold: Tensor, keep: Tensor | None) -> Tensor:
    """Soft-thresholding (complex: of the magnitude); ``keep`` marks unpenalised entries."""
    shrunk = torch.sgn(c) * torch.relu(c.abs() - threshold)
    return shrunk if keep is None else torch.where(keep, c, shrunk)


def _settled(iteration: int, new: Tensor, old: Tensor, tol: float) -> bool:
    """The stopping rule, evaluated every ``CHECK_EVERY`` iterations: every image's relative
    change ``||new - old|| / ||new||`` is below ``tol``."""
    if iteration % CHECK_EVERY:
        return False
    size = norms(new)
    return bool(torch.all(norms(new - old) < tol * size.clamp_min(torch.finfo(size.dtype).tiny)))


# --------------------------------------------------------------------------- geometry
class _Padded:
    """Zero-padding of images to sizes a wavelet transform accepts (identity when they fit)."""

    def __init__(self, shape: tuple[int, ...], multiple: int) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.padded = (
            -(-self.shape[0] // multiple) * multiple,
            -(-self.shape[1] // multiple) * multiple,
        )

    def pad(self, x: Tensor) -> Tensor:
        if self.padded == self.shape:
            return x
        return torch.nn.functional.pad(
            x, (0, self.padded[1] - self.shape[1], 0, self.padded[0] - self.shape[0])
        )

    def crop(self, x: Tensor) -> Tensor:
        return x[..., : self.shape[0], : self.shape[1]]


def _wavelet_for(
    shape: tuple[int, ...], wavelet: str, levels: int | None
) -> tuple[Wavelet2D, _Padded]:
    padding = _Padded(shape, 2 ** (3 if levels is None else levels))
    return Wavelet2D(padding.padded, wavelet, levels), padding


# --------------------------------------------------------------------------- l1-wavelet
def l1_wavelet(y: Tensor, op: LinearOperator, **params: object) -> Tensor:
    """l1-wavelet reconstruction of the batch ``y``; see :func:`l1_wavelet_solve`."""
    return l1_wavelet_solve(y, op, **params)[0]  # type: ignore[arg-type]


def l1_wavelet_solve(
    y: Tensor,
    op: LinearOperator,
    *,
    lam: float | None = None,
    sigma: float | Tensor | None = None,
    wavelet: str = "db4",
    levels: int | None = None,
    penalize_approximation: bool = False,
    max_iter: int | None = None,
    tol: float = 1e-4,
    restart: bool = True,
    x0: Tensor | None = None,
    cycle_spins: int = CYCLE_SPINS,
) -> tuple[Tensor, SolveInfo]:
    """Solve the l1-wavelet problem; returns ``(x [B, *op.in_shape], SolveInfo)``.

    ``cycle_spins`` (penalised form): cycle spinning with a fixed schedule. One FISTA step is a
    cycle of proximal-gradient steps with the wavelet applied to the image circularly shifted by
    ``(k, k)``, ``k = 0 .. cycle_spins - 1`` (each the exact proximal step of
    ``lam ||W S_k x||_1``); momentum and restarts act between cycles and the result is the
    average of the last cycle's iterates, so the regulariser acts like a partly
    translation-invariant frame. Measured +1.2 to +4 dB over one shift on Shepp-Logan,
    ellipses and MR_small at equal cost per step (benchmarks/README.md). ``cycle_spins=1`` is
    plain FISTA.

    ``levels`` defaults to ``min(4, deepest possible)`` and at least 3. Images whose sides are
    not divisible by ``2**levels`` are zero-padded for the transform, which stays orthonormal on
    the padded grid; the data term sees the cropped image, and the proximal step
    ``crop(W^H soft(W pad(v)))`` is then the usual approximation of the exact one (as in SigPy,
    whose zero-padded wavelet is not unitary either). Sizes divisible by ``2**levels`` (all
    power-of-two images) take the exact proximal step.
    """
    defaults = _defaults(op, "l1_wavelet")
    lam = defaults.l1_lam if lam is None else lam
    iterations = defaults.max_iter if max_iter is None else max_iter
    transform, padding = _wavelet_for(op.in_shape, wavelet, levels)
    keep = None if penalize_approximation else transform.approximation_mask(y.device)

    def analysis(x: Tensor) -> Tensor:
        return transform.forward(padding.pad(x))

    def synthesis(c: Tensor) -> Tensor:
        return padding.crop(transform.inverse(c))

    x = _initial(y, op, x0)
    # The constrained problem does not depend on the weight; its dual iterates do (see TV).
    weight = per_item(lam * data_scale(y, op) * op.norm_bound() ** 2, x)
    if sigma is not None:
        return _bpdn(y, op, analysis, synthesis, keep, x, weight, sigma, iterations, tol)
    if cycle_spins < 1:
        raise ValueError(f"cycle_spins must be >= 1, got {cycle_spins}")
    # shifts by multiples of 2**levels leave a periodic orthonormal wavelet's penalty unchanged
    shifts = [(k, k) for k in range(min(cycle_spins, 2**transform.levels))]
    return _fista(y, op, analysis, synthesis, keep, x, weight, iterations, tol, restart, shifts)


def _fista(
    y: Tensor,
    op: LinearOperator,
    analysis: Transform,
    synthesis: Transform,
    keep: Tensor | None,
    x: Tensor,
    weight: Tensor,
    max_iter: int,
    tol: float,
    restart: bool,
    shifts: list[tuple[int, int]],
) -> tuple[Tensor, SolveInfo]:
    """FISTA with gradient-based adaptive restart (O'Donoghue & Candes 2015), per image.

    With several ``shifts`` one FISTA step is a *cycle*: a proximal-gradient step with the
    wavelet shifted by each shift in turn; momentum and restarts act between cycles, the
    result is the average of the cycle's iterates, and the stopping rule compares successive
    cycle averages. ``max_iter`` counts proximal-gradient steps (whole cycles, at least one).
    One shift is plain FISTA."""
    step = 1.0 / op.norm_bound() ** 2
    threshold = weight * step
    z = x
    t = torch.ones(x.shape[0], dtype=real_dtype(x.dtype), device=x.device)
    restarts = torch.zeros((), dtype=torch.int64, device=x.device)
    cycle = len(shifts)
    done = 0
    converged = False
    result = x
    for _ in range(max(1, max_iter // cycle)):
        w = z
        iterates = []
        for s in shifts:
            v = w - step * op.A_adjoint(op.A(w) - y)
            w = _roll(synthesis(_soft(analysis(_roll(v, s)), threshold, keep)), (-s[0], -s[1]))
            iterates.append(w)
        x_new = w
        average = x_new if cycle == 1 else torch.stack(iterates).mean(0)
        if restart:
            # restart where the momentum points against the proximal-gradient step
            bad = torch.sum(((z - x_new).conj() * (x_new - x)).real.reshape(x.shape[0], -1), 1) > 0
            t = torch.where(bad, torch.ones_like(t), t)
            restarts += bad.sum()
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        z = x_new + per_item((t - 1) / t_new, x_new) * (x_new - x)
        done += cycle
        settled = _settled(done if cycle == 1 else 0, average, result, tol)
        x, t, result = x_new, t_new, average
        if settled:
            converged = True
            break
    return result, SolveInfo(iterations=done, converged=converged, restarts=int(restarts))


def _roll(x: Tensor, shift: tuple[int, int]) -> Tensor:
    """Circular shift of the last two axes (no copy for the zero shift)."""
    if shift == (0, 0):
        return x
    return torch.roll(x, shift, (-2, -1))


def _ball_projection(u: Tensor, centre: Tensor, radius: Tensor) -> Tensor:
    """Project each item of ``u`` onto the l2 ball ``||u - centre|| <= radius``."""
    d = u - centre
    n = norms(d)
    factor = torch.where(
        n > radius, radius / n.clamp_min(torch.finfo(n.dtype).tiny), torch.ones_like(n)
    )
    return centre + per_item(factor, d) * d


def _sigma_tensor(sigma: float | Tensor, y: Tensor) -> Tensor:
    s = torch.as_tensor(sigma, dtype=real_dtype(y.dtype), device=y.device).reshape(-1)
    if bool(torch.any(s < 0)):
        raise ValueError("sigma must be >= 0")
    return s.expand(y.shape[0])


def _bpdn(
    y: Tensor,
    op: LinearOperator,
    analysis: Transform,
    synthesis: Transform,
    keep: Tensor | None,
    x: Tensor,
    weight: Tensor,
    sigma: float | Tensor,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, SolveInfo]:
    """``min weight ||W x||_1 s.t. ||A x - y|| <= sigma`` by Chambolle-Pock on ``K = A W^H``."""
    radius = _sigma_tensor(sigma, y)
    norm = op.norm_bound()
    tau = sigma_d = 0.99 / norm
    c = analysis(x)
    c_bar = c
    u = torch.zeros_like(y)
    done, converged = 0, False
    for k in range(max_iter):
        # dual step: prox of the conjugate of the indicator of the data ball (Moreau)
        w = u + sigma_d * op.A(synthesis(c_bar))
        u = w - sigma_d * _ball_projection(w / sigma_d, y, radius)
        c_new = _soft(c - tau * analysis(op.A_adjoint(u)), tau * weight, keep)
        c_bar = 2 * c_new - c
        done = k + 1
        if _settled(done, c_new, c, tol):
            c = c_new
            converged = True
            break
        c = c_new
    return synthesis(c), SolveInfo(iterations=done, converged=converged)


# ---------------------------------------------------------------------- total variation
def _grad(x: Tensor) -> Tensor:
    """Forward differences ``[B, 2, H, W]`` (zero across the last row/column)."""
    dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.stack([dy, dx], dim=1)


def _grad_adjoint(p: Tensor) -> Tensor:
    """Adjoint of :func:`_grad` (minus the divergence)."""
    py, px = p[:, 0], p[:, 1]
    gy = torch.nn.functional.pad(py[..., :-1, :], (0, 0, 1, 0)) - torch.nn.functional.pad(
        py[..., :-1, :], (0, 0, 0, 1)
    )
    gx = torch.nn.functional.pad(px[..., :, :-1], (1, 0, 0, 0)) - torch.nn.functional.pad(
        px[..., :, :-1], (0, 1, 0, 0)
    )
    return gy + gx


def _project_tv_dual(p: Tensor, bound: Tensor, isotropic: bool) -> Tensor:
    """Project dual variables onto ``{|p_pixel| <= bound}`` (isotropic: the 2-vector's norm)."""
    magnitude = torch.sqrt(torch.sum(p.abs() ** 2, dim=1, keepdim=True)) if isotropic else p.abs()
    return p / torch.clamp(magnitude / bound, min=1.0)


def total_variation(y: Tensor, op: LinearOperator, **params: object) -> Tensor:
    """Total-variation reconstruction of the batch ``y``; see :func:`total_variation_solve`."""
    return total_variation_solve(y, op, **params)[0]  # type: ignore[arg-type]


def total_variation_solve(
    y: Tensor,
    op: LinearOperator,
    *,
    lam: float | None = None,
    sigma: float | Tensor | None = None,
    isotropic: bool = True,
    max_iter: int | None = None,
    balance: float | None = None,
    tol: float = 1e-4,
    x0: Tensor | None = None,
) -> tuple[Tensor, SolveInfo]:
    """Solve the TV problem by Chambolle-Pock; returns ``(x [B, *op.in_shape], SolveInfo)``.

    The operator is rescaled to unit norm inside the solver (an equivalent problem); the primal
    and dual steps are ``tau = 0.99 / (3 sqrt(balance))`` and ``sigma = 0.99 sqrt(balance) / 3``
    (``tau sigma ||[A; grad]||^2 < 1`` since that norm is at most 3). ``balance`` has a large
    effect on the speed of convergence and defaults to a measured per-modality value.
    """
    defaults = _defaults(op, "total_variation")
    lam = defaults.tv_lam if lam is None else lam
    iterations = defaults.max_iter if max_iter is None else max_iter
    norm = op.norm_bound()
    y_s = y / norm  # with A_s = A / ||A||: 1/2||A_s x - y_s||^2 = (1/2||A x - y||^2) / ||A||^2
    x = _initial(y, op, x0)
    x_bar = x
    u = torch.zeros_like(y)
    p = torch.zeros((y.shape[0], 2, *op.in_shape), dtype=x.dtype, device=y.device)
    balance = defaults.tv_balance if balance is None else balance
    tau, step = 0.99 / 3.0 / math.sqrt(balance), 0.99 / 3.0 * math.sqrt(balance)
    # lam ||A||^2 / ||A||^2 for the unit-norm operator. The constrained problem does not depend
    # on this weight, but its dual variables do: the same weight keeps the same step balance.
    bound = per_item(lam * data_scale(y, op), p)
    radius = None if sigma is None else _sigma_tensor(sigma, y) / norm
    done, converged = 0, False
    for k in range(iterations):
        w = u + step * op.A(x_bar) / norm
        if radius is None:
            u = (w - step * y_s) / (1 + step)
        else:
            u = w - step * _ball_projection(w / step, y_s, radius)
        p = _project_tv_dual(p + step * _grad(x_bar), bound, isotropic)
        x_new = x - tau * (op.A_adjoint(u) / norm + _grad_adjoint(p))
        x_bar = 2 * x_new - x
        done = k + 1
        if _settled(done, x_new, x, tol):
            x = x_new
            converged = True
            break
        x = x_new
    return x, SolveInfo(iterations=done, converged=converged)
