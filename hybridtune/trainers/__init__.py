"""Accelerate trainers: the shared loop, checkpoints, evaluation and domain adaptation.

Continual learning lives in :mod:`hybridtune.continual`.

Example:
    >>> from hybridtune.trainers import Trainer, TrainerCallback, open_run_dir   # doctest: +SKIP
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "Trainer": "loop", "TrainerCallback": "loop", "TrainState": "loop", "make_accelerator": "loop",
    "build_learners": "loop", "open_run_dir": "rundir", "RunDir": "rundir", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint", "evaluate_perplexity": "evaluation",
    "BlockSampler": "sampler", "write_report": "report", "load_report": "report",
    "run_domain_adaptation": "domain", "build_data": "data", "cached_conversion": "cache",
    "apply_op_backend": "loop",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, {k: f".{v}" for k, v in _LAZY.items()}, globals())
