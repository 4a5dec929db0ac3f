"""Gradient masking, detected rather than trusted: the tell-tale signs that a gradient search's
"nothing found" says nothing (Athalye, Carlini & Wagner, ICML 2018; Carlini et al., "On
evaluating adversarial robustness", 2019), checked per threat model, eps and image before test 1
may say ``stable``:

* **random beats the search** -- a seeded handful of random directions, each scaled to the
  radius, changes the search's objective by more than ``1 + random_tolerance`` times the
  search's worst case: the search is weaker than guessing;
* **the gradient vanishes where the function does not** -- at a random point at half the
  radius, along the radial direction and a few random ones, the central finite difference of
  the objective is material (it changes by ``fd_material`` of its value across the step) while
  the gradient's directional derivative is below ``vanishing`` of it, or of the opposite sign
  (a rounding step, a detached branch: the search is steered by a gradient that is not the
  network's);
* **the search does not grow with the radius** -- the worst change found at the largest eps is
  not larger than at the smallest, where the baseline's is.

:func:`probe` spends the network's forward (and, where it has a gradient, backward) passes the
first two take, every random choice from one seed; :func:`signs` reads the three from the
numbers of results.json (so a merge of units or parts judges them as one run does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reconstruction.attacks import Objective, ThreatModel, output_change
from reconstruction.batch import norms, per_item
from reconstruction.operators import LinearOperator
from reconstruction.operators.base import complex_dtype
from reconstruction.protocols import Masking

__all__ = ["POINT", "Probe", "probe", "signs"]

Recon = Callable[[Tensor], Tensor]
#: where the gradient is checked: a random point at this fraction of the radius (inside the
#: ball, so that both finite-difference points are too)
POINT = 0.5


@dataclass
class Probe:
    """What :func:`probe` found at each eps (``rows``: results.json's ``masking`` per eps row)
    and the network passes it spent (forward and forward+backward, each one)."""

    rows: list[dict[str, Any]]
    passes: int


class _Objective:
    """The search's objective as a function of points ``u`` of the unit ball, per image:
    ``||f(y + M(u eps s)) - f(y)|| / ||f(y)||`` (ROI-weighted) or the error against the truth
    ``||f(y + M(u eps s)) - x|| / ||x||``, as :class:`~reconstruction.attacks.BudgetResult`
    records them (``M``: ``A`` for the image threat model, else the identity; ``s``: ``||x||``
    or ``||y||``)."""

    def __init__(
        self,
        f: Recon,
        op: LinearOperator,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        objective: Objective,
        roi: Tensor | None,
    ) -> None:
        self.f, self.op, self.y, self.threat = f, op, y, threat
        with torch.no_grad():
            clean = f(y)
        self.roi = roi if objective == "change" else None
        self.target = clean if objective == "change" else x.abs().to(clean.dtype)
        like = x if threat == "image" else y
        self.shape = tuple(like.shape)
        self.dtype = complex_dtype(x.dtype) if threat == "image" and op.in_complex else like.dtype
        self.scale = norms(like)

    def __call__(self, u: Tensor, owner: Tensor, eps: float) -> Tensor:
        p = u * per_item(self.scale[owner] * eps, u)
        m = self.op.A(p) if self.threat == "image" else p
        return output_change(self.f(self.y[owner] + m), self.target[owner], self.roi)

    def random(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` seeded directions of the unit sphere per image, ``[n * B, ...]`` (drawn on
        the CPU, image-major within each draw)."""
        b = self.shape[0]
        d = torch.randn((n * b, *self.shape[1:]), generator=gen, dtype=self.dtype)
        d = d.to(self.y.device)
        return d / per_item(norms(d).clamp_min(1e-30), d)


def probe(
    f: Recon,
    op: LinearOperator,
    x: Tensor,
    y: Tensor,
    *,
    threat_model: ThreatModel,
    eps: Sequence[float],
    objective: Objective,
    roi: Tensor | None,
    settings: Masking,
    gradients: bool,
    seed: int,
) -> Probe:
    """The network's side of the checks at every ``eps``: the best of ``random_draws`` random
    directions at the radius (``random_best``, per image), and, with ``gradients``, at a random
    point at half the radius the objective (``point_value``), its gradient's directional
    derivative (``gradient_slope``) and its central finite difference (``difference_slope``)
    along the radial direction and ``directions`` random ones (per image, per direction; in
    units of the radius)."""
    obj = _Objective(f, op, x, y, threat_model, objective, roi)
    gen = torch.Generator().manual_seed(seed)
    b = obj.shape[0]
    images = torch.arange(b, device=y.device)
    rows: list[dict[str, Any]] = []
    passes = 0
    h = settings.fd_step
    for e in eps:
        draws = settings.random_draws
        with torch.no_grad():
            values = obj(obj.random(draws, gen), images.repeat(draws), e)
        passes += draws * b
        row: dict[str, Any] = {"random_best": _floats(values.reshape(draws, b).amax(0))}
        if gradients:
            u0 = (POINT * obj.random(1, gen)).requires_grad_(True)
            value = obj(u0, images, e)
            (grad,) = torch.autograd.grad(value.sum(), u0)
            u0 = u0.detach()
            k = 1 + settings.directions
            # [k * B]: the radial direction first, then the random ones
            dirs = torch.cat([u0 / POINT, obj.random(settings.directions, gen)])
            owner = images.repeat(k)
            base = u0.repeat(k, *([1] * (u0.ndim - 1)))
            with torch.no_grad():
                plus = obj(base + h * dirs, owner, e)
                minus = obj(base - h * dirs, owner, e)
            slope = torch.real(grad.repeat(k, *([1] * (grad.ndim - 1))).conj() * dirs)
            slope = slope.flatten(1).sum(1)
            passes += b + 2 * k * b
            row["point_value"] = _floats(value.detach())
            row["gradient_slope"] = _per_image(slope, k, b)
            row["difference_slope"] = _per_image((plus - minus) / (2 * h), k, b)
        rows.append(row)
    return Probe(rows, passes)


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def _per_image(t: Tensor, k: int, b: int) -> list[list[float]]:
    """Items ``[k * B]`` (direction-major) as ``[B][k]``."""
    return [[float(v) for v in image] for image in t.reshape(k, b).T.tolist()]


def _direction(j: int) -> str:
    return "radial direction" if j == 0 else f"random direction {j}"


def signs(per_threat: dict[str, Any], objective: str, settings: Masking) -> tuple[list[str], bool]:
    """Every sign of masking in test 1's numbers (``threat_models``), in order (threat model,
    eps, image), with its figures; and whether every eps row holds the checks' numbers (a
    search whose masking was not checked cannot support ``stable``)."""
    key = "output_change" if objective == "change" else "error"
    found: list[str] = []
    checked = True
    for threat, block in per_threat.items():
        rows = block["results"]
        for row in rows:
            m = row.get("masking")
            if m is None:
                checked = False
                continue
            where = f"{threat} domain, eps = {row['eps']:g}"
            worst = row["network"][key]
            for i, (rand, best) in enumerate(zip(m["random_best"], worst, strict=True)):
                if rand > (1 + settings.random_tolerance) * best:
                    found.append(
                        f"random perturbations at the radius change the output more than the "
                        f"search's worst case ({where}, image {i}: {rand:.4g} against {best:.4g})"
                    )
            for i, (value, grads, diffs) in enumerate(
                zip(
                    m.get("point_value", []),
                    m.get("gradient_slope", []),
                    m.get("difference_slope", []),
                    strict=True,
                )
            ):
                for j, (g, d) in enumerate(zip(grads, diffs, strict=True)):
                    material = d != 0 and 2 * settings.fd_step * abs(d) >= (
                        settings.fd_material * value
                    )
                    if material and g * (1.0 if d > 0 else -1.0) < settings.vanishing * abs(d):
                        found.append(
                            f"the gradient vanishes where finite differences do not ({where}, "
                            f"image {i}, {_direction(j)} at half the radius: directional "
                            f"derivative {g:.3g} against {d:.3g} by central differences)"
                        )
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            pairs = zip(
                first["network"][key],
                last["network"][key],
                first["baseline"][key],
                last["baseline"][key],
                strict=True,
            )
            for i, (n0, n1, b0, b1) in enumerate(pairs):
                if n1 <= n0 and b1 > b0:
                    found.append(
                        f"the search does not grow with the radius ({threat} domain, image {i}: "
                        f"{n1:.4g} at eps = {last['eps']:g}, {n0:.4g} at eps = "
                        f"{first['eps']:g}; the baseline's {b0:.4g} to {b1:.4g})"
                    )
    return found, checked
