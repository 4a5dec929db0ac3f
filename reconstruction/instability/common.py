"""What the three tests share: the audited subject, verdicts, the baseline beside the network,
and summary statistics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from torch import Tensor

from reconstruction import baselines, metrics, protocols
from reconstruction.models.adapter import magnitude
from reconstruction.models.manifest import Manifest
from reconstruction.operators import LinearOperator
from reconstruction.protocols import Baseline, MetricConvention

__all__ = [
    "STABLE_WORDING",
    "AuditData",
    "BaselineSubject",
    "Recon",
    "Scoring",
    "Subject",
    "TestResult",
    "Unit",
    "Verdict",
    "agreed",
    "baseline_reconstructor",
    "mean_ci",
    "measure",
    "network_reconstructor",
    "scores",
    "seeded",
    "to_numpy",
    "units",
]

Verdict = Literal["stable", "unstable", "inconclusive", "skipped"]
Recon = Callable[[Tensor], Tensor]
#: how every ``stable`` verdict is worded: absence of evidence within a budget, not a proof
STABLE_WORDING = "no instability found within the protocol's budget"


class Subject(Protocol):
    """What an audit needs from a model (:class:`reconstruction.models.LoadedModel` is one)."""

    @property
    def name(self) -> str: ...

    manifest: Manifest
    operator: LinearOperator
    mask: np.ndarray | None
    gradient_access: Literal["white-box", "black-box"]
    fixed_size: bool
    fixed_size_reason: str | None

    @property
    def gradient_route(self) -> Literal["exact", "straight-through surrogate", "gradient-free"]:
        """Where the search's gradient comes from (``LoadedModel.gradient_route``)."""
        ...

    def reconstructor(
        self, op: LinearOperator | None = None, *, differentiable: bool = True
    ) -> Callable[[Tensor], Tensor]: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass
class TestResult:
    """One test's verdict, the reason, the numbers behind it, and arrays for figures."""

    name: str
    verdict: Verdict
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    #: arrays for the report's figures (not part of results.json)
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, **self.numbers}


def network_reconstructor(
    subject: Subject, op: LinearOperator | None = None, *, differentiable: bool = True
) -> Recon:
    """The network as a map ``y -> |f(y)|`` (the real image scored against the truth)."""
    f = subject.reconstructor(op, differentiable=differentiable)

    def run(y: Tensor) -> Tensor:
        return magnitude(f(y))

    return run


def baseline_reconstructor(op: LinearOperator, config: Baseline, *, attack: bool) -> Recon:
    """The CS baseline as ``y -> |x_cs(y)|``: to its own tolerance for clean reconstructions,
    or exactly ``config.attack_iterations`` unrolled (differentiable) iterations in attacks."""
    solve = (
        baselines.total_variation if config.method == "total_variation" else baselines.l1_wavelet
    )
    params: dict[str, Any] = {"max_iter": config.attack_iterations, "tol": 0.0} if attack else {}

    def run(y: Tensor) -> Tensor:
        return magnitude(solve(y, op, **params))

    return run


@dataclass(frozen=True)
class AuditData:
    """What :func:`reconstruction.suite.run_suite` hands every test beside the truth images.

    ``kspace``: for measured data, the fully sampled centred k-space of every image
    ``[B, H, W]`` (multi-coil ``[B, C, H, W]``), scaled like the truth; the tests undersample
    it with their masks (:func:`measure`). ``None``: the measurements are simulated,
    ``A(truth)``. ``volume_max``: each image's volume maximum ``[B]`` (the truth's scale), the
    data range of the ``fastmri`` metric convention."""

    kspace: Tensor | None = None
    volume_max: Tensor | None = None


def measure(op: LinearOperator, truth: Tensor, data: AuditData | None) -> Tensor:
    """The measurements of ``truth`` under ``op``: the measured k-space's samples at ``op``'s
    mask when the data are measured, else ``op.A(truth)``."""
    if data is None or data.kspace is None:
        return op.A(truth)
    return op.from_grid(data.kspace)  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class Scoring:
    """How images are scored against the truth, by the protocol's metric convention
    (:class:`reconstruction.protocols.Metrics`):

    * ``recon-audit``: PSNR with peak = the reference image's dynamic range, Gaussian-window
      SSIM (sigma 1.5) with that range;
    * ``fastmri``: fastMRI's ``evaluate.py``: PSNR with data range = the volume's maximum,
      SSIM per slice with that range (7x7 uniform window, sample covariances), and NMSE; per
      image, so that images can be paired (fastMRI aggregates PSNR and NMSE over volumes).
    """

    convention: MetricConvention = "recon-audit"
    volume_max: Tensor | None = None

    @classmethod
    def of(cls, protocol: protocols.Protocol, data: AuditData | None) -> Scoring:
        return cls(protocol.metrics.convention, None if data is None else data.volume_max)

    def _range(self, truth: Tensor) -> Tensor:
        if self.volume_max is not None:
            return self.volume_max.to(truth.device)
        return truth.abs().flatten(1).amax(dim=1)

    def psnr(self, image: Tensor, truth: Tensor) -> Tensor:
        if self.convention == "recon-audit":
            return metrics.psnr(image.float(), truth)
        return metrics.psnr(image.float(), truth, data_range=self._range(truth))

    def __call__(self, image: Tensor, truth: Tensor) -> dict[str, list[float]]:
        """PSNR and SSIM per image (``fastmri``: also NMSE)."""
        if self.convention == "recon-audit":
            return scores(image, truth)
        peak = self._range(truth)
        return {
            "psnr_db": [float(v) for v in self.psnr(image, truth)],
            "ssim": [
                float(v)
                for v in metrics.ssim(image.float(), truth, data_range=peak, window="uniform")
            ],
            "nmse": [float(v) for v in metrics.nmse(image.float(), truth)],
        }


def scores(image: Tensor, truth: Tensor) -> dict[str, list[float]]:
    """PSNR (peak: the reference's dynamic range) and SSIM per image (the ``recon-audit``
    convention)."""
    return {
        "psnr_db": [float(v) for v in metrics.psnr(image.float(), truth)],
        "ssim": [float(v) for v in metrics.ssim(image.float(), truth)],
    }


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean and a Student-t confidence interval over images (``[mean, mean]`` for one value)."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if a.size < 2:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": int(a.size)}
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(a.size)}


def to_numpy(t: Tensor) -> np.ndarray:
    array: np.ndarray = t.detach().cpu().numpy()
    return array


def seeded(seed: int, *salt: int) -> int:
    """A child seed derived from the protocol's seed (stable across runs and machines)."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


@dataclass(frozen=True)
class Unit:
    """One part of an audit's decomposition (:attr:`reconstruction.protocols.Images.per_unit`):
    a test run on the consecutive images ``start:stop``, its random choices seeded by ``seed``
    (the protocol's seed for the one unit of an undivided audit; else derived from the
    protocol's seed and ``index``). A test's units are merged by its registry entry."""

    index: int
    start: int
    stop: int
    seed: int

    @property
    def images(self) -> range:
        return range(self.start, self.stop)


def agreed(values: list[Any], what: str) -> Any:
    """One value every unit (or part) of an audit's test shares (a setting, a label), refused
    where they differ."""
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"the units differ in {what}: they are not one audit")
    return values[0]


def units(protocol: protocols.Protocol, n_images: int) -> list[Unit]:
    """The protocol's decomposition of ``n_images`` images: fixed by the protocol alone, never
    by how many workers run it."""
    size = protocol.images.per_unit
    if size is None:
        return [Unit(0, 0, n_images, protocol.seed)]
    starts = range(0, n_images, size)
    return [
        Unit(k, s, min(s + size, n_images), seeded(protocol.seed, 60, k))
        for k, s in enumerate(starts)
    ]


@dataclass
class BaselineSubject:
    """The CS baseline audited as if it were the network: a calibration control. Its verdicts
    must be ``stable`` (the tests compare a method with itself)."""

    manifest: Manifest
    operator: LinearOperator
    mask: np.ndarray | None
    config: Baseline
    gradient_access: Literal["white-box", "black-box"] = "white-box"
    fixed_size: bool = False
    fixed_size_reason: str | None = None

    @property
    def name(self) -> str:
        return f"{self.config.method} baseline"

    @property
    def gradient_route(self) -> Literal["exact", "straight-through surrogate", "gradient-free"]:
        return "exact"

    def reconstructor(
        self, op: LinearOperator | None = None, *, differentiable: bool = True
    ) -> Callable[[Tensor], Tensor]:
        return baseline_reconstructor(op or self.operator, self.config, attack=differentiable)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": "baseline",
            "sha256": None,
            "gradient_access": self.gradient_access,
            "gradient_route": self.gradient_route,
            "modality": self.manifest.modality,
            "operator": type(self.operator).__name__,
            "baseline": self.config.model_dump(),
            "fixed_size": False,
        }
