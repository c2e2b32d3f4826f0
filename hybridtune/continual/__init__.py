"""Continual learning: a sequence of domains, replay and regularisers, and the forgetting matrix.

Example:
    >>> from hybridtune.continual import ContinualTrainer, run_continual   # doctest: +SKIP
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "ContinualTrainer": "trainer", "run_continual": "pipeline", "format_matrix": "pipeline",
    "ContinualSection": "config", "load_continual_config": "config",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, {k: f".{v}" for k, v in _LAZY.items()}, globals())
