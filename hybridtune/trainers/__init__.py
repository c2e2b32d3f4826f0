"""Accelerate trainers: the shared loop, checkpoints, evaluation, domain adaptation and continual learning.

Example:
    >>> from hybridtune.trainers import Trainer, TrainerCallback, open_run_dir   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Trainer": "loop", "TrainerCallback": "loop", "TrainState": "loop", "make_accelerator": "loop",
    "build_learners": "loop", "open_run_dir": "rundir", "RunDir": "rundir", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint", "evaluate_perplexity": "evaluation",
    "causal_lm_nll": "evaluation", "BlockSampler": "sampler", "write_report": "report", "load_report": "report",
    "run_domain_adaptation": "domain", "build_data": "data", "cached_conversion": "cache",
    "apply_op_backend": "loop", "ContinualTrainer": "continual", "run_continual": "continual_pipeline",
    "ContinualSection": "continual_config", "load_continual_config": "continual_config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hybridtune.trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
