"""``ConversionConfig``, the one conversion config: defined with the run configuration
(:mod:`hybridtune.config.conversion`, the run config's ``conversion:`` section is this class) and used here by
``convert``, the recipes and calibration, so ``ht.convert(model)``, ``hybridtune convert`` and the trainer share one
set of fields and defaults.

Example:
    >>> ConversionConfig().compensation, ConversionConfig().label
    (True, 'graded-base2 dynamic mean_abs/8 K8 +comp [clip_free]')
"""

from __future__ import annotations

from hybridtune.config.conversion import COVERAGE_LEVELS, ConversionConfig

__all__ = ["ConversionConfig", "COVERAGE_LEVELS"]
