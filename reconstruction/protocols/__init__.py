"""Audit protocols: versioned YAML documents holding every parameter and every threshold a
verdict depends on, identified by a canonical SHA-256.

Built in: ``quick`` (smoke-size, CI and demos), ``standard`` (the full audit), ``pnas`` (the
paper's settings), and replays of published robustness protocols: ``genzel2022`` (Genzel,
Macdonald & März, TPAMI 2022) and ``darestani2021`` (Darestani, Chaudhari & Heckel, ICML 2021).
A user's own file follows the same schema (:func:`protocol_json_schema`).
The canonical hash is the SHA-256 of the protocol's canonical JSON (every field, defaults
filled in, keys sorted, no whitespace; ``metrics``, added later, only when it is not the
default), so two files that differ only in comments, key order or formatting have the same
hash, and any change of a value changes it.

>>> p = load_protocol("quick")
>>> p.name, p.version, len(p.sha256)
('quick', '2', 64)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reconstruction.documents import read_document, read_mapping, validation_problem

if TYPE_CHECKING:
    from reconstruction.attacks import SearchSettings

__all__ = [
    "BUILTIN",
    "METRIC_CONVENTIONS",
    "MetricConvention",
    "Metrics",
    "Protocol",
    "ProtocolError",
    "is_builtin",
    "load_protocol",
    "parse_protocol",
    "protocol_json_schema",
    "shown_name",
]

HERE = Path(__file__).resolve().parent
BUILTIN = ("quick", "standard", "pnas", "genzel2022", "darestani2021")

Positive = Annotated[float, Field(gt=0.0)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class ProtocolError(ValueError):
    """A protocol is invalid or unknown; the message names the field when one is at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Images(_Strict):
    max_images: Annotated[int, Field(ge=1, le=256)] = 8
    #: how the audit is decomposed: each test runs on units of this many consecutive images,
    #: each unit seeded from the protocol's seed and its own index, and the units' numbers are
    #: merged (the statistics over images computed from the merged per-image numbers). The
    #: units are the same however many workers run them, so a run fanned out per unit gives
    #: the numbers of a run in one process. None: one unit of every image (added after
    #: protocols were first issued: absent, a protocol keeps the hash it was issued with).
    per_unit: Annotated[int, Field(ge=1, le=256)] | None = None


class Baseline(_Strict):
    method: Literal["total_variation", "l1_wavelet"] = "total_variation"
    #: unrolled iterations of the baseline inside attacks (its clean reconstruction runs to
    #: its own tolerance)
    attack_iterations: Annotated[int, Field(ge=5, le=1000)] = 100


class Budget(_Strict):
    """The worst-case search on ``||r|| <= eps ||x||`` (or ``||e|| <= eps ||y||``); see
    :mod:`reconstruction.attacks` for what each field does."""

    eps: list[Positive] = Field(min_length=1)
    #: starts per eps, run side by side: warm starts, the Jacobian's top singular vector and
    #: seeded random directions at the full radius
    restarts: Annotated[int, Field(ge=1, le=64)] = 4
    #: best points of one eps kept as warm starts for the next (at most restarts)
    keep: Annotated[int, Field(ge=1, le=64)] = 2
    #: starts per eps for the baseline: a convex-regularised solver whose worst case a short
    #: search finds (its warm start and its Jacobian's direction); every unstable finding also
    #: needs the baseline's search to have plateaued, so a weak baseline search cannot make the
    #: network look worse
    baseline_restarts: Annotated[int, Field(ge=1, le=64)] = 2
    #: the cap on iterations per start (a start stops earlier when it plateaus)
    iterations: Annotated[int, Field(ge=1, le=10000)] = 100
    #: no start stops on a plateau before this many iterations (at most iterations)
    min_iterations: Annotated[int, Field(ge=1, le=10000)] = 10
    #: the first step as a fraction of the radius (Adam: the learning rate per coordinate,
    #: times 1 / sqrt(n))
    step_size: Positive = 0.25
    method: Literal["normalized-gradient", "adam"] = "normalized-gradient"
    #: a start has plateaued when its best change grew by less than plateau_tolerance
    #: (relative) over its last plateau_window iterations
    plateau_window: Annotated[int, Field(ge=1, le=10000)] = 10
    plateau_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    jacobian_start: bool = True
    #: Jacobian products (J^T J v) for that start: the size of its Lanczos basis (the name kept
    #: from the power iteration it replaced)
    power_iterations: Annotated[int, Field(ge=1, le=100)] = 6
    #: the grid is searched from the largest eps down (warm starts carried down); then each
    #: eps's best point is carried up to the next larger eps and searched again from there
    both_ways: bool = True
    #: what the search maximises: the change from the clean reconstruction
    #: ||f(y + e) - f(y)|| / ||f(y)|| (the paper's), or the error against the ground truth
    #: ||f(y + e) - x|| / ||x|| (Genzel et al.'s untargeted attack)
    objective: Literal["change", "error"] = "change"

    @model_validator(mode="after")
    def _sorted(self) -> Budget:
        if self.eps != sorted(set(self.eps)):
            raise ValueError("perturbation.budget.eps must be increasing and distinct")
        return self

    def settings(self) -> SearchSettings:
        """The search's settings; ``keep`` is at most ``restarts`` and ``min_iterations`` at
        most ``iterations``."""
        # here, not at the top: protocols import no torch (the web process validates them)
        from reconstruction.attacks import SearchSettings

        fields = self.model_dump(exclude={"eps", "objective", "baseline_restarts"})
        fields["keep"] = min(self.keep, self.restarts)
        fields["min_iterations"] = min(self.min_iterations, self.iterations)
        return SearchSettings(**fields)


class Pnas(_Strict):
    """The paper's search: ``v <- momentum v + step grad Q``, ``r <- r + v``, ``r0 = c U[0,1)``,
    ``Q(r) = 1/2 ||f(y + A r) - f(y)||^2 - lam/2 ||r||^2`` (norms relative to ``||x||``)."""

    iterations: Annotated[int, Field(ge=1, le=100000)] = 200
    lam: Annotated[float, Field(ge=0.0)] = 0.01
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    step: Positive = 0.05
    init_scale: Annotated[float, Field(ge=0.0)] = 0.001
    #: stop when ||r|| / ||x|| exceeds this
    max_norm: Positive = 0.04
    #: stop when ||f(y + A r) - f(y)|| / ||f(y)|| exceeds this
    max_output_change: Positive = 1.0
    #: fractions of the run at which r1 < r2 < r3 are kept
    checkpoints: list[Fraction] = Field(default=[0.33, 0.66, 1.0], min_length=1)
    attack_baseline: bool = True


class Controls(_Strict):
    #: Gaussian perturbations of the worst case's norm; the worst of this many draws is kept
    noise_draws: Annotated[int, Field(ge=1, le=1000)] = 10
    #: noise of this fraction of ||r1|| is added to r1 (Fig. 2 of the paper)
    persistence_noise: Annotated[float, Field(ge=0.0, le=2.0)] = 0.25


class PerturbationThresholds(_Strict):
    #: unstable needs the network's worst relative output change (whole image, or in the
    #: worst window) to exceed the baseline's by this factor at the same eps ...
    margin: Annotated[float, Field(ge=1.0)] = 2.0
    #: ... and material damage: its PSNR against the ground truth falls by at least this much,
    min_psnr_drop_db: Annotated[float, Field(ge=0.0)] = 3.0
    #: or its SSIM by at least this much,
    min_ssim_drop: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    #: or, in its worst window, the squared error grows by at least this many dB over the
    #: larger of the window's and the whole image's clean error
    local_min_psnr_drop_db: Annotated[float, Field(ge=0.0)] = 6.0
    #: stable needs every network search to have plateaued and its two best starts to agree
    #: within this fraction (1 - second best / best)
    max_restart_spread: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1


class Local(_Strict):
    """Localized damage: sliding windows of ``window`` times the image side (half-overlapping),
    and searches that target the network's worst window (network and baseline alike), each
    started from its whole-image worst case (plus ``restarts - 1`` random starts)."""

    window: Annotated[float, Field(gt=0.0, le=0.5)] = 0.125
    attack: bool = True
    restarts: Annotated[int, Field(ge=1, le=64)] = 1


class Masking(_Strict):
    """The checks for gradient masking before a ``stable`` (Athalye et al. 2018, Carlini et
    al. 2019), per threat model, eps and image (:mod:`reconstruction.instability.masking`).
    Added after protocols were first issued: at its defaults it is left out of the canonical
    hash, so a protocol keeps the hash it was issued with."""

    #: random directions at the radius: masked when one of them changes the search's objective
    #: by more than ``1 + random_tolerance`` times the search's worst case
    random_draws: Annotated[int, Field(ge=1, le=64)] = 4
    random_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    #: the gradient against central finite differences at a random point at half the radius,
    #: along the radial direction and this many random ones
    directions: Annotated[int, Field(ge=0, le=16)] = 2
    #: the finite difference's half step, as a fraction of the radius
    fd_step: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    #: a difference is material when the objective changes across it by at least this fraction
    #: of its value at the point ...
    fd_material: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    #: ... and the gradient is masked there when its directional derivative is below this
    #: fraction of the difference's (or of the opposite sign)
    vanishing: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class Perturbation(_Strict):
    threat_models: list[Literal["image", "measurement"]] = Field(
        default=["image", "measurement"], min_length=1
    )
    budget: Budget
    pnas: Pnas | None = None
    controls: Controls = Controls()
    #: optional region of interest [row0, col0, row1, col1] weighting the output difference
    roi: tuple[int, int, int, int] | None = None
    local: Local = Local()
    thresholds: PerturbationThresholds = PerturbationThresholds()
    masking: Masking = Masking()

    def check_image_size(self, image_size: Sequence[int]) -> None:
        """Raise :class:`ProtocolError` naming ``perturbation.roi`` when the region of interest
        leaves the image (known only at audit start, from the model's manifest)."""
        if self.roi is not None and (self.roi[2] > image_size[0] or self.roi[3] > image_size[1]):
            raise ProtocolError(
                f"field 'perturbation.roi': {list(self.roi)} does not fit the image "
                f"(image size {list(image_size)})"
            )

    @model_validator(mode="after")
    def _roi_box(self) -> Perturbation:
        if self.roi is not None:
            r0, c0, r1, c1 = self.roi
            if min(self.roi) < 0 or r1 <= r0 or c1 <= c0:
                raise ValueError(
                    "perturbation.roi must be [row0, col0, row1, col1] with 0 <= row0 < row1 "
                    "and 0 <= col0 < col1"
                )
        return self


#: confidence level of the Student-t intervals the verdicts of tests 2 and 3 rest on
Confidence = Annotated[float, Field(ge=0.5, lt=1.0)]


def _increasing(values: list[Any], where: str) -> None:
    if values != sorted(set(values)):
        raise ValueError(f"{where} must be increasing and distinct")


class StructuralThresholds(_Strict):
    #: a detail is visible when the correlation of the reconstruction's change with it reaches
    #: ``visible_correlation`` and its contrast recovery reaches ``visible_recovery``
    visible_correlation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    visible_recovery: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    #: a miss: a detail the baseline shows and the network does not, with the network's
    #: contrast recovery below the baseline's by at least this much; unstable: for some height
    #: and contrast, the network's mean recovery over the details the baseline shows is below
    #: the baseline's by at least this much too, with a paired confidence interval above zero
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    confidence: Confidence = 0.95


class Structural(_Strict):
    heights_px: list[Annotated[int, Field(ge=4, le=256)]] = Field(min_length=1)
    contrasts: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(min_length=1)
    text: str | None = "CAN U SEE IT"
    symbols: bool = True
    thresholds: StructuralThresholds = StructuralThresholds()

    @field_validator("heights_px", "contrasts")
    @classmethod
    def _distinct(cls, values: list[Any], info: ValidationInfo) -> list[Any]:
        _increasing(values, f"structural.{info.field_name}")
        return values

    def check_image_size(self, image_size: Sequence[int]) -> None:
        """Raise :class:`ProtocolError` naming ``structural.heights_px`` when a detail is
        taller than the image (known only at audit start, from the model's manifest)."""
        rows = int(image_size[0])
        too_tall = [h for h in self.heights_px if h > rows]
        if too_tall:
            raise ProtocolError(
                f"field 'structural.heights_px': detail heights {too_tall} px are larger than "
                f"the image ({rows} rows, image size {list(image_size)})"
            )


class SamplingThresholds(_Strict):
    #: decay: between two ratios of the ladder, the mean PSNR at the larger one below the
    #: smaller one's by more than this (dB) ...
    decay_db: Annotated[float, Field(ge=0.0, le=60.0)] = 1.0
    #: ... or the mean SSIM by more than this; in both cases with a paired confidence
    #: interval over images below zero
    decay_ssim: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: stagnation: the network's gain up to the largest ratio below this fraction of the
    #: baseline's gain
    stagnation_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    confidence: Confidence = 0.95


class Sampling(_Strict):
    #: sampling ratios (CT: angle counts) as multiples of the training one, capped at full
    factors: list[Positive] = Field(min_length=2)
    thresholds: SamplingThresholds = SamplingThresholds()

    @field_validator("factors")
    @classmethod
    def _has_training(cls, factors: list[float]) -> list[float]:
        if factors != sorted(set(factors)) or 1.0 not in factors:
            raise ValueError(
                "sampling.factors must be increasing, distinct and include 1.0 (the training "
                "ratio): a nested ladder"
            )
        return factors


MetricConvention = Literal["recon-audit", "fastmri"]
#: every metric convention, by name, as the certificates state it
METRIC_CONVENTIONS: dict[str, str] = {
    "recon-audit": "PSNR with peak = each reference image's dynamic range (max - min); SSIM "
    "with an 11x11 Gaussian window (sigma 1.5) and that range",
    "fastmri": "fastMRI's (evaluate.py): PSNR with data range = the volume's maximum; SSIM per "
    "slice with that range (7x7 uniform window, sample covariances); NMSE; per image",
}


class Metrics(_Strict):
    """How reconstructions are scored against the truth (PSNR, SSIM; the verdicts' thresholds
    apply to these scores)."""

    convention: MetricConvention = "recon-audit"


class Protocol(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]
    version: Annotated[str, Field(min_length=1, max_length=40)]
    description: str = ""
    #: every random choice of the audit derives from this seed
    seed: int = 0
    images: Images = Images()
    baseline: Baseline = Baseline()
    metrics: Metrics = Metrics()
    perturbation: Perturbation | None
    structural: Structural | None
    sampling: Sampling | None

    @model_validator(mode="after")
    def _not_a_look_alike(self) -> Protocol:
        builtin = look_alike(self.name)
        if builtin is not None:
            raise ValueError(
                f"the name {self.name!r} differs from the built-in protocol {builtin!r} only by "
                "case or punctuation; built-in names are reserved: choose another name"
            )
        return self

    @model_validator(mode="after")
    def _runs_a_test(self) -> Protocol:
        if self.perturbation is None and self.structural is None and self.sampling is None:
            raise ValueError(
                "the protocol runs no test: at least one of perturbation, structural and "
                "sampling must be given"
            )
        return self

    def check_image_size(self, image_size: Sequence[int]) -> None:
        """Every check that needs the model's image size (detail heights, the ROI)."""
        if self.structural is not None:
            self.structural.check_image_size(image_size)
        if self.perturbation is not None:
            self.perturbation.check_image_size(image_size)

    def canonical_json(self) -> str:
        """Every field, defaults filled in, keys sorted, no whitespace; but ``metrics`` and
        ``perturbation.masking`` (added after protocols were first issued) enter only when they
        are not the default, so a protocol that keeps the defaults keeps the hash it was issued
        with (as does one without ``images.per_unit``)."""
        data = self.model_dump(mode="json")
        if self.metrics == Metrics():
            del data["metrics"]
        if self.perturbation is not None and self.perturbation.masking == Masking():
            del data["perturbation"]["masking"]
        if self.images.per_unit is None:
            del data["images"]["per_unit"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_yaml(self) -> str:
        """The protocol with every default filled in (what the reports embed)."""
        dumped: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        return dumped

    @property
    def shown_name(self) -> str:
        """The name the protocol is shown under: see :func:`shown_name`."""
        return shown_name(self.name, self.sha256)

    def identity(self) -> dict[str, str | bool]:
        """``name`` is :attr:`shown_name`; ``builtin``: whether it is a built-in protocol
        itself (its name and canonical hash)."""
        return {
            "name": self.shown_name,
            "version": self.version,
            "sha256": self.sha256,
            "builtin": is_builtin(self.name, self.sha256),
        }


@lru_cache
def _builtin_sha256(name: str) -> str:
    return load_protocol(name).sha256


#: earlier versions of the built-ins, by name: their canonical hashes as issued (an audit run
#: under one is still an audit under that built-in, at the version it records)
RETIRED: dict[str, dict[str, str]] = {
    # version 2, before its decomposition per image (images.per_unit)
    "standard": {"2": "c3e5e155174db0888cf5c666ef5db3f71ba8a636ff70b39e6fd6414cef471654"},
}


def is_builtin(name: str, sha256: str) -> bool:
    """Whether a protocol of this name and canonical hash is the built-in one, or one of its
    earlier versions (:data:`RETIRED`)."""
    return name in BUILTIN and (
        sha256 == _builtin_sha256(name) or sha256 in RETIRED.get(name, {}).values()
    )


def shown_name(name: str, sha256: str) -> str:
    """A built-in protocol is shown under its name; every other is shown as ``custom:<name>``,
    a built-in's name taken by another protocol (its canonical hash differs: other values, or
    another version) included (a name cannot hold ``:``, so none can pose as either; a name
    already shown so, as audits store it, stays as it is)."""
    if name.startswith("custom:") or is_builtin(name, sha256):
        return name
    return f"custom:{name}"


def _plain(name: str) -> str:
    """A name without case and punctuation: what a reader sees it as."""
    return "".join(c for c in name.lower() if c.isalnum())


def look_alike(name: str) -> str | None:
    """The built-in whose name ``name`` differs from only by case or punctuation (``Standard``,
    ``s.t.a.n.d.a.r.d``, ``quick_``), or None: such names are reserved too."""
    if name in BUILTIN:
        return None
    return next((b for b in BUILTIN if _plain(b) == _plain(name)), None)


def protocol_json_schema() -> dict[str, Any]:
    schema = Protocol.model_json_schema()
    schema["title"] = "recon-audit protocol"
    return schema


def parse_protocol(text: str, source: str = "protocol") -> Protocol:
    """Validate a protocol from YAML (or JSON) text."""
    try:
        data = read_mapping(text, source)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    try:
        return Protocol.model_validate(data)
    except ValidationError as exc:
        where, message = validation_problem(exc)
        raise ProtocolError(f"{source}: field '{where}': {message}" if where else message) from exc


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name (one of :data:`BUILTIN`) or a YAML file."""
    if str(name_or_path) in BUILTIN:
        path = HERE / f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ProtocolError(
                f"unknown protocol {str(name_or_path)!r}: use one of {', '.join(BUILTIN)} or a "
                "YAML file"
            )
    try:
        text = read_document(path, f"protocol {path}")
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    return parse_protocol(text, path.name)
