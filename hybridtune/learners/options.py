"""The options of the built-in learners, typed: what a run config's ``learners[i].options`` may hold.

Each built-in learner's registry entry names its options dataclass (:mod:`.registry`); a third-party factory
declares one as ``options_type`` (a class attribute, or ``register_learner(..., options_type=...)``). ``learner()``,
``hybridtune validate`` and the trainer build the options with the config schema, so an unknown key or a wrong type
fails naming the key and the valid ones before any model work. The fields mirror the learners' keyword arguments
and their defaults (a test holds the two equal); value ranges are checked by the learners themselves.

Example:
    >>> from hybridtune.config_schema import build
    >>> build(STDPOptions, {"tau_pre": 4}, "options").tau_pre
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class OptimizerOptions:
    """Options of learners that own a torch optimizer (``None`` / ``default``: the trainer's value)."""

    optimizer: str = "AdamW"
    optimizer_kwargs: dict[str, Any] | None = None
    scheduler: str | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_grad_norm: float | Literal["default"] | None = "default"


@dataclass
class SurrogateOptions(OptimizerOptions):
    """:class:`~hybridtune.learners.surrogate.SurrogateLearner`: backprop through the surrogate gradient."""

    scheduler_kwargs: dict[str, Any] | None = None


@dataclass
class PlasticOptions:
    """The shared options of the plastic (trace-based, no backward) learners; see
    :class:`~hybridtune.learners.plasticity.learner.PlasticLearner`."""

    tau_pre: float = 8.0
    tau_post: float = 8.0
    a_plus: float = 1.0
    a_minus: float = 1.0
    inclusive: bool = True
    rule: Literal["local", "projected"] = "local"
    post: Literal["adapter", "layer"] = "adapter"
    weight_dependence: Literal["additive", "soft"] = "additive"
    w_min: float | None = None
    w_max: float | None = None
    bound_scale: float = 2.0
    mu: float = 1.0
    oja: float = 0.0
    max_update_norm: float | None = None
    normalize: Literal["tokens", "sequences"] = "tokens"
    target_rate: float | None = None
    threshold_lr: float = 0.05
    chunk: int | None = None
    log_layers: bool = False
    seed: int = 0


@dataclass
class STDPOptions(PlasticOptions):
    """:class:`~hybridtune.learners.plasticity.stdp_learner.STDPLearner` (its post-synaptic activity defaults to
    the whole layer's output)."""

    post: Literal["adapter", "layer"] = "layer"


@dataclass
class RSTDPOptions(PlasticOptions):
    """:class:`~hybridtune.learners.plasticity.rstdp_learner.RSTDPLearner`: reward-modulated plasticity.
    ``reward`` / ``tokenizer`` are Python objects (or a reward name) and not usually written in YAML."""

    estimator: Literal["antithetic", "stdp"] = "antithetic"
    pairs: int = 1
    sigma_bottleneck: float = 1.0
    sigma_output: float = 0.01
    reward: Any = None
    tokenizer: Any = None
    baseline: Literal["ema", "token_ema", "group", "none"] = "ema"
    baseline_momentum: float = 0.9
    leave_one_out: bool = True
    gamma: float = 0.9
    reset_eligibility: bool = True
    normalize_advantage: bool = False
    escape: bool = False
    temperature: float = 0.5
    top_blocks: int | None = None  # only the top blocks' adapters are perturbed and learn (None: all)
    perturb: Literal["together", "separately"] = "together"  # bottleneck and output noise in one pair or a pair each
    tail_forwards: bool = True  # perturbed forwards re-run only the blocks from the lowest perturbed one upward


@dataclass
class EpropOptions(OptimizerOptions):
    """:class:`~hybridtune.learners.eprop.learner.EpropLearner`: eligibility traces times a learning signal
    (``top_blocks`` / ``block_decay`` mirror its ``TOP_BLOCKS`` / ``BLOCK_DECAY``; a test keeps them equal)."""

    feedback: str = "one_hop"  # a registered feedback path (one_hop, residual, random, ...); one_hop measured best
    top_blocks: int | None = 6  # only the top blocks' adapters learn (None: all)
    block_decay: float = 1.0
    seed: int = 0
    top_chunk: int = 256
    error_dtype: Literal["float32", "bfloat16"] = "float32"  # the top error's GEMM against lm_head's weight
    feedback_from: str | None = None  # a saved adapter directory whose random feedback matrices to reuse


__all__ = ["OptimizerOptions", "SurrogateOptions", "PlasticOptions", "STDPOptions", "RSTDPOptions", "EpropOptions"]
