"""Forward models: batched, differentiable torch operators with exact adjoints."""

from reconstruction.operators.base import (
    AdjointOperator,
    ComposedOperator,
    LinearOperator,
    OperatorShapeError,
    cgls,
)
from reconstruction.operators.ct import ParallelBeamCT, fbp_filter
from reconstruction.operators.mri import (
    MultiCoilMRI,
    SingleCoilMRI,
    birdcage_sensitivities,
    normalize_sensitivities,
)

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "LinearOperator",
    "MultiCoilMRI",
    "OperatorShapeError",
    "ParallelBeamCT",
    "SingleCoilMRI",
    "birdcage_sensitivities",
    "cgls",
    "fbp_filter",
    "normalize_sensitivities",
]
