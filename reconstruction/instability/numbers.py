"""The numbers behind each test's verdict, typed: one pydantic model per test's block of
``results.json`` (``tests.<name>``). They are the results schema
(:mod:`reconstruction.results`, published as ``docs/results.schema.json``): a run's numbers are
checked against them before results.json is written, and the report reads their fields.

Schema ``recon-audit/results/v1`` grows by addition only: a field added after the first v1
documents is optional here, and readers keep fields they do not know (``extra="allow"``), so
every v1 document stays readable. Writers add nothing the models do not declare
(:func:`undeclared`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconstruction.protocols import (
    Local,
    Masking,
    PerturbationThresholds,
    Pnas,
    SamplingThresholds,
    StructuralThresholds,
)

__all__ = [
    "Comparison",
    "DetailClass",
    "DetailRow",
    "DetailScore",
    "EpsRow",
    "Finding",
    "GradientMasking",
    "GradientRoute",
    "Interval",
    "LadderRow",
    "LocalRecord",
    "MaskingCost",
    "MaskingRow",
    "Outcome",
    "Perturbation",
    "RoleRecord",
    "Sampling",
    "SearchRecord",
    "SearchStrength",
    "Skipped",
    "Structural",
    "ThreatBlock",
    "undeclared",
]

ThreatModel = Literal["image", "measurement"]
Judged = Literal["stable", "unstable", "inconclusive"]
#: where the search's gradient comes from (``reconstruction.models.LoadedModel.gradient_route``)
GradientRoute = Literal["exact", "straight-through surrogate", "gradient-free"]


class Record(BaseModel):
    """A block of results.json: known fields typed, unknown ones kept (schema v1 is additive).
    ``open_ended``: its further fields are described elsewhere, and a writer may add them."""

    model_config = ConfigDict(extra="allow", frozen=True)
    open_ended: ClassVar[bool] = False


class Outcome(Record):
    """What every test's block holds: its verdict and the reason."""

    verdict: Literal["stable", "unstable", "inconclusive", "skipped"]
    reason: str


class Skipped(Outcome):
    """A test that did not run (not in the protocol, run in another shard, or refused by the
    network): the reason only."""

    verdict: Literal["skipped"]


class Interval(Record):
    """A mean over images with its Student-t confidence interval (``[mean, mean]`` for one)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


class Paired(Record):
    """A paired comparison's interval; ``n = 0`` (nothing else) when there is no pair."""

    n: int
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


# --------------------------------------------------------------------------------------------
# test 1: perturbations


class SearchRecord(Record):
    """How strong one search was, per image: iterations of its longest start, whether every
    start plateaued, the best two starts' disagreement (``None``: one start), and its cost."""

    iterations: list[int]
    plateaued: list[bool]
    restart_spread: list[float | None]
    passes: int
    starts: list[str]


class Damage(Record):
    """What a worst case found does, per image: its size, the output change, and the damage
    against the ground truth (whole image and worst sliding window)."""

    size: list[float]
    measurement_size: list[float]
    output_change: list[float]
    error: list[float]
    psnr_clean_db: list[float]
    psnr_perturbed_db: list[float]
    ssim_clean: list[float]
    ssim_perturbed: list[float]
    #: the worst sliding window's box and its damage (absent from the earliest v1 documents)
    worst_window: list[list[int]] | None = None
    local_error_increase_db: list[float] | None = None
    local_change: list[float] | None = None


class RoleRecord(Damage):
    """One role's (network or baseline) whole-image search at one eps, with its controls."""

    local_lipschitz: list[float]
    #: absent from documents written before searches recorded their strength
    search: SearchRecord | None = None
    #: ``[starts][images]``
    restart_changes: list[list[float]] = Field(default_factory=list)
    #: the mean best change so far per iteration, one curve per start
    loss_curves: list[list[float]] = Field(default_factory=list)
    noise_control_change: list[float]
    persistence: list[float]
    #: forward queries (black-box search of the network only)
    queries: int | None = None


class LocalRecord(Damage):
    """One role's search targeting the network's worst window at one eps (``targeted``
    false: the whole-image worst case, scored in the window, where no targeted search was
    needed)."""

    window: list[list[int]]
    window_change: list[float]
    targeted: bool = True
    search: SearchRecord


class MaskingRow(Record):
    """The network's side of the gradient-masking checks at one eps
    (:mod:`reconstruction.instability.masking`): per image the largest value of the search's
    objective over the random directions at the radius; and, where the network has a gradient,
    at a random point at half the radius, the objective, and per direction (the radial one
    first, then the random ones) the gradient's directional derivative and the central finite
    difference (in units of the radius)."""

    random_best: list[float]
    point_value: list[float] | None = None
    gradient_slope: list[list[float]] | None = None
    difference_slope: list[list[float]] | None = None


class EpsRow(Record):
    eps: float
    network: RoleRecord
    baseline: RoleRecord
    local_network: LocalRecord | None = None
    local_baseline: LocalRecord | None = None
    #: absent from documents written before the masking checks
    masking: MaskingRow | None = None

    def role(self, role: str) -> RoleRecord:
        record: RoleRecord = getattr(self, role)
        return record

    def local(self, role: str) -> LocalRecord | None:
        record: LocalRecord | None = getattr(self, f"local_{role}")
        return record


class Amplification(Record):
    """The local amplification (the Jacobian's largest singular value at the clean input) per
    image, and how it was estimated."""

    network: list[float] | None = None
    baseline: list[float] | None = None
    method: str | None = None


class MaskingCost(Record):
    """What the masking checks of one threat model cost and the seeds they drew from (one per
    unit of the audit, each derived from the protocol's seed)."""

    seeds: list[int]
    passes: int


class ThreatBlock(Record):
    eps: list[float]
    normalisation: str | None = None
    results: list[EpsRow]
    amplification: Amplification | None = None
    passes: dict[str, int] | None = None
    masking: MaskingCost | None = None


class Finding(Record):
    """One case against the network: at (threat model, eps, image, objective), its change, the
    baseline's, their ratio and the damage."""

    threat_model: ThreatModel
    eps: float
    image: int
    objective: str
    network_change: float
    baseline_change: float
    change_ratio: float
    network_psnr_drop_db: float
    network_ssim_drop: float
    network_local_error_increase_db: float
    baseline_psnr_drop_db: float
    baseline_search_plateaued: bool


class Convergence(Record):
    converged: bool
    problems: list[str]


class GradientMasking(Record):
    """The masking checks' outcome: whether every eps row was checked, the signs of masking
    found (with their figures; the first 20), and the network passes the checks spent."""

    checked: bool
    masked: bool
    signs: list[str]
    passes: int


class SearchStrength(Record):
    """Whether the search's gradient route was shown strong enough to sign ``stable``: the
    fraction of a reference search's worst case its search was measured to reach
    (``docs/verdicts.md``; ``None``: not measured) against the fraction ``required``."""

    route: GradientRoute
    measured: float | None
    required: float
    shown: bool


class PnasRole(Record):
    """The paper's search for one role: per checkpoint ``k``, per image."""

    sizes: list[list[float]]
    output_change: list[list[float]]
    psnr_db: list[list[float]]
    iterations: list[list[int]]
    stop_reason: str
    loss_curve: list[float]


class PnasNumbers(Record):
    settings: Pnas
    network: PnasRole
    baseline: PnasRole | None = None

    def role(self, role: str) -> PnasRole | None:
        record: PnasRole | None = getattr(self, role)
        return record


class Perturbation(Outcome):
    """Test 1's block: the searches per threat model and eps, the evidence and the
    borderline cases, whether the searches converged, and the paper's search."""

    verdict: Judged
    search: str
    objective: str
    gradient_access: Literal["white-box", "black-box"]
    baseline: str
    baseline_attack_iterations: int
    threat_models: dict[ThreatModel, ThreatBlock]
    thresholds: PerturbationThresholds
    local: Local | None = None
    convergence: Convergence | None = None
    #: absent from documents written before test 1 recorded them (as are the masking
    #: settings and checks)
    gradient_route: GradientRoute | None = None
    strength: SearchStrength | None = None
    masking: Masking | None = None
    gradient_masking: GradientMasking | None = None
    pnas: PnasNumbers | None = None
    evidence: list[Finding] = Field(default_factory=list)
    borderline: list[Finding] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# test 2: structural changes


class DetailScore(Record):
    """How one reconstruction shows one detail."""

    correlation: float
    contrast_recovery: float
    detail_error: float
    #: 1.0 when the reconstruction shows the detail (correlation and recovery both at their
    #: thresholds), else 0.0
    visible: float
    roi_ssim: float | None = None


class DetailRow(Record):
    """One detail placed in one image, and how the network and the baseline show it."""

    image: int
    #: the protocol's contrast it was placed at (its class; absent: ``contrast``)
    class_contrast: float | None = None
    name: str
    box: list[int]
    height_px: int
    contrast: float
    amplitude: float
    support_pixels: int
    network: DetailScore
    baseline: DetailScore
    missed: bool

    @property
    def placed_contrast(self) -> float:
        """The class contrast the detail was placed at."""
        return self.contrast if self.class_contrast is None else self.class_contrast

    def role(self, role: str) -> DetailScore:
        score: DetailScore = getattr(self, role)
        return score


class Counts(Record):
    details: int
    visible_network: int
    visible_baseline: int
    missed_by_network: int
    missed_per_image: dict[str, int] = Field(default_factory=dict)


class DetailClass(Record):
    """The details of one height and contrast: counts and the paired comparison of contrast
    recovery (baseline - network) over those the baseline shows."""

    height_px: int
    contrast: float
    details: int
    images: int
    visible_network: int
    visible_baseline: int
    missed: int
    gap: Paired
    beyond_margin: bool
    significant: bool
    every_detail: bool
    confirmed: bool


class Structural(Outcome):
    """Test 2's block: every detail scored, per class the comparison, and the smallest height
    each role recovers per contrast."""

    verdict: Judged
    details: list[DetailRow]
    skipped: dict[str, str]
    font: str
    thresholds: StructuralThresholds
    counts: Counts
    #: per class the paired comparison (absent from the first v1 documents, as are
    #: ``paired`` and ``smallest_recovered_px``)
    classes: list[DetailClass] = Field(default_factory=list)
    paired: Paired | None = None
    #: role -> contrast -> the smallest height (px) at which half the details are visible
    smallest_recovered_px: dict[str, dict[str, int | None]] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# test 3: more samples


class LadderScores(Record):
    """One role's scores at one ratio: per image, and the mean with its interval."""

    psnr_db: list[float]
    ssim: list[float]
    #: the ``fastmri`` metric convention only
    nmse: list[float] | None = None
    psnr: Interval
    ssim_ci: Interval


class LadderRow(Record):
    factor: float
    ratio: float
    training: bool
    network: LadderScores
    baseline: LadderScores

    def role(self, role: str) -> LadderScores:
        scores: LadderScores = getattr(self, role)
        return scores


class Difference(Interval):
    """The paired per-image differences (larger ratio minus smaller) and their interval."""

    differences: list[float]


class Comparison(Record):
    """One pair of ratios and one metric: the network's and the baseline's paired change."""

    metric: Literal["psnr_db", "ssim"]
    from_factor: float
    from_ratio: float
    to_factor: float
    to_ratio: float
    network: Difference
    baseline: Difference
    decline: float
    beyond_threshold: bool
    significant: bool
    every_image: bool
    baseline_declines: bool


class Sampling(Outcome):
    """Test 3's block: the ladder of ratios scored, every paired comparison, and the pattern."""

    verdict: Judged
    unit: str
    training_ratio: float
    ladder: list[LadderRow]
    thresholds: SamplingThresholds
    monotone: bool
    #: the paired comparisons (absent from the first v1 documents, as are the fields to
    #: ``declines_confirmed`` and ``decline``)
    n_images: int | None = None
    comparisons: list[Comparison] = Field(default_factory=list)
    #: per metric, the comparison with the network's largest mean decline
    largest_decline: dict[str, Comparison | None] = Field(default_factory=dict)
    declines_beyond_threshold: int | None = None
    declines_confirmed: int | None = None
    pattern: Literal["decay", "unconfirmed_decay", "stagnation", "monotone", "improving"]
    decline: Comparison | None = None
    network_gain_db: float | None = None
    baseline_gain_db: float | None = None


def undeclared(value: object, where: str = "") -> list[str]:
    """Where ``value`` (a validated model, or lists and dicts of them) holds fields its models
    do not declare: what a writer must not add without extending the schema."""
    if isinstance(value, Record) and value.open_ended:
        return []
    if isinstance(value, BaseModel):
        found = [f"{where}.{key}".lstrip(".") for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += undeclared(getattr(value, name), f"{where}.{name}")
        return found
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in undeclared(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [p for k, item in enumerate(value) for p in undeclared(item, f"{where}[{k}]")]
    return []
