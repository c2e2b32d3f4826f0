"""Outlier handling for conversion: rotations, online Hadamard transforms, per-channel scales, smoothing.

Example:
    >>> from hybridtune.conversion.outliers import get_outliers
    >>> get_outliers("rotate").name
    'rotate'
"""

from hybridtune.conversion.outliers.hadamard import (
    apply_hadamard,
    hadamard,
    hadamard_adds,
    hadamard_factors,
    random_hadamard,
    random_orthogonal,
)
from hybridtune.conversion.outliers.online import OnlineHadamard, attach_input_transform, input_transform
from hybridtune.conversion.outliers.strategies import (
    OutlierStrategy,
    available_outliers,
    calibration_start,
    get_outliers,
    register_outliers,
)

__all__ = [
    "OnlineHadamard",
    "OutlierStrategy",
    "apply_hadamard",
    "attach_input_transform",
    "available_outliers",
    "calibration_start",
    "get_outliers",
    "hadamard",
    "hadamard_adds",
    "hadamard_factors",
    "input_transform",
    "random_hadamard",
    "random_orthogonal",
    "register_outliers",
]
