"""The sections of a run config other than ``conversion`` (:mod:`.conversion`) and ``continual``
(:mod:`.continual`): the base model, the spiking LoRA adapter, the learners, the data, the trainer, the op backend
and tracking. Each is a dataclass whose ``validate`` raises :class:`ConfigError` naming the key.

Example:
    >>> AdapterSection(r=4).alpha, TrainerSection().steps
    (16.0, 100)
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hybridtune.config_schema import ConfigError


@dataclass
class ModelSection:
    """The base ANN: ``default`` (embedded SmolLM2-135M), a hub id, a local dir or a GGUF file.

    ``attention``: transformers' attention implementation where the conversion does not cover ``attention`` (null:
    the model's default, ``sdpa`` for most). ``eager`` returns the attention probabilities, which eprop's ``one_hop``
    feedback needs to take ``v_proj``'s signal through the mixing over tokens (without them it takes the identity).
    A converted model's perplexity differs a little between the two: a rounding difference flips threshold crossings.
    """

    name: str = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attention: Literal["sdpa", "eager"] | None = None


@dataclass
class AdapterSection:
    """Spiking LoRA: rank, scaling, targets and the bottleneck neuron strategy; the one adapter config.

    The run config's ``adapter:`` section, ``hybridtune.adapters.spiking_lora_config(**fields)`` and the trainer all
    build the peft config from this class (:func:`hybridtune.adapters.lora_config`), so every field reaches the
    model and an unknown key is an error. ``decay`` / ``learn_decay`` apply to ``lif``, ``max_spikes`` to ``mt``
    (0 or null: no cap).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "up_proj", "down_proj"])
    neuron: Literal["mt", "lif", "heaviside"] = "mt"
    threshold: float = 0.05
    decay: float = 0.9
    max_spikes: int | None = 8
    surrogate: str = "atan"
    slope: float = 2.0
    init_b_std: float = 0.0
    learn_threshold: bool = True
    learn_decay: bool = True

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"got {self.r}; the rank must be >= 1", "r")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"got {self.dropout}; must be in [0, 1)", "dropout")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"got {self.decay}; must be in (0, 1]", "decay")
        if self.threshold <= 0:
            raise ConfigError(f"got {self.threshold}; must be > 0", "threshold")
        if not self.target_modules:
            raise ConfigError("empty; name at least one module (e.g. q_proj)", "target_modules")
        if self.max_spikes is not None and self.max_spikes < 0:
            raise ConfigError(f"got {self.max_spikes}; must be >= 0 (0 or null: no cap)", "max_spikes")
        if self.init_b_std < 0:
            raise ConfigError(f"got {self.init_b_std}; must be >= 0", "init_b_std")
        if self.slope <= 0:
            raise ConfigError(f"got {self.slope}; must be > 0", "slope")


@dataclass
class LearnerSpec:
    """One learner and the adapter parameters it owns.

    ``params``: ``all``, ``rest`` (what no other learner claims), a regex searched in parameter names (``lora_A``)
    or a list of regexes. ``options`` are passed to the learner's factory (e.g. ``optimizer: SGD``,
    ``max_grad_norm: null``, ``scheduler_kwargs: {...}``).
    """

    name: str = "surrogate"
    params: str | list[str] = "all"
    lr: float = 1e-3
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("empty; name a learner (e.g. surrogate)", "name")
        if self.lr <= 0:
            raise ConfigError(f"got {self.lr}; must be > 0", "lr")
        patterns = [self.params] if isinstance(self.params, str) else self.params
        if not patterns:
            raise ConfigError("empty; use all, rest, a regex or a list of regexes", "params")
        for p in patterns:
            if p in ("all", "rest"):
                continue
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"{p!r} is not a valid regex ({exc}); use all, rest or a regex such as lora_A",
                                  "params") from None


@dataclass
class DataSection:
    """Training / evaluation corpus: a built-in domain name or a path (txt, jsonl, parquet).

    Held-out blocks come from the ``eval`` split of ``train`` unless ``eval`` names another corpus (all of it is
    then held out); at most ``eval_tokens`` tokens are evaluated.
    """

    train: str = "python-docs"
    eval: str | None = None  # None: the held-out split of ``train``
    text_field: str = "text"
    # .txt only: what one document is (null: paragraphs of a single file, files of a directory with >= 10 files,
    # else paragraphs) and how the bytes are decoded (e.g. latin-1, cp1252, utf-8-sig)
    sample_by: Literal["document", "paragraph", "line"] | None = None
    encoding: str = "utf-8"
    block_size: int = 256
    max_train_tokens: int | None = None
    eval_tokens: int = 4096

    def validate(self) -> None:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(f"got {self.encoding!r}, which Python does not know; e.g. utf-8, latin-1, cp1252, "
                              "utf-16", "encoding") from None
        if self.block_size < 2:
            raise ConfigError(f"got {self.block_size}; must be >= 2", "block_size")
        if self.eval_tokens < 2:
            raise ConfigError(f"got {self.eval_tokens}; must be >= 2", "eval_tokens")
        if self.max_train_tokens is not None and self.max_train_tokens < self.block_size:
            raise ConfigError(f"got {self.max_train_tokens}; must be >= data.block_size ({self.block_size}) or null",
                              "max_train_tokens")


@dataclass
class TrainerSection:
    """The Accelerate loop: steps, batching, schedule, evaluation, checkpoints.

    ``steps`` counts optimizer steps; each takes ``grad_accum`` micro-batches of ``batch_size`` blocks per process.
    ``scheduler`` / ``warmup_steps`` / ``weight_decay`` / ``max_grad_norm`` are the defaults of optimizer-based
    learners (a learner's ``options`` override them). ``eval_every`` / ``save_every`` are in steps;
    ``early_stopping_patience`` in evaluations without improvement (null: never stop early).
    """

    output_dir: str = "runs/default"
    overwrite: bool = False
    resume: bool = False
    seed: int = 0
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: Literal["constant", "linear", "cosine", "polynomial", "inverse_sqrt"] = "cosine"
    max_grad_norm: float | None = 1.0
    eval_every: int = 50
    early_stopping_patience: int | None = None
    save_every: int = 50
    keep_last: int = 2
    gradient_checkpointing: bool = False  # recompute block activations in backward (less memory, more compute)
    sharding: Literal["none", "fsdp"] = "none"  # fsdp: torch FSDP2 shards the frozen base over the ranks

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"got {getattr(self, name)}; must be >= 1", name)
        if self.overwrite and self.resume:
            raise ConfigError("overwrite and resume exclude each other: resume continues the run in output_dir, "
                              "overwrite deletes it", "overwrite")
        if self.warmup_steps < 0:
            raise ConfigError(f"got {self.warmup_steps}; must be >= 0", "warmup_steps")
        if self.weight_decay < 0:
            raise ConfigError(f"got {self.weight_decay}; must be >= 0", "weight_decay")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"got {self.max_grad_norm}; must be > 0 or null (no clipping)", "max_grad_norm")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"got {self.early_stopping_patience}; must be >= 1 or null", "early_stopping_patience")
        if not self.output_dir:
            raise ConfigError("empty; name the run's output directory", "output_dir")


@dataclass
class OpsSection:
    """Which implementation runs the ``spike_lora`` op: ``auto`` (the CUDA kernel on a GPU where it loads, else
    the PyTorch reference), ``torch`` or ``cuda`` (an error where the kernel cannot load). ``null``: the
    ``HYBRIDTUNE_OP_BACKEND`` environment variable, else ``auto``."""

    backend: Literal["auto", "torch", "cuda"] | None = None


@dataclass
class TrackingSection:
    """Where metrics go: W&B (online / offline / disabled), TensorBoard, or nowhere (``metrics.jsonl`` always).

    ``WANDB_MODE`` in the environment, when set, overrides ``mode``.
    """

    backend: Literal["wandb", "tensorboard", "none"] = "wandb"
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "hybridtune"
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.project:
            raise ConfigError("empty; name a W&B project", "project")


@dataclass
class RecoverySection:
    """Recovering a replaced softmax (``conversion.softmax: relu_count | relu_sum | sigmoid``) in two stages.

    Stage 1, *attention transfer*: ``stage1_steps`` Adam steps at ``stage1_lr`` on only the replacement's per-head
    parameters, so every block's attention output matches softmax attention on the same q / k / v (MSE), on
    ``stage1_batch_size`` training blocks per step (null: ``trainer.batch_size``); a curve point every
    ``eval_every`` steps, a checkpoint every ``save_every``. Stage 2 is the run's adapter training itself
    (``learners``, ``trainer.steps``). ``stage1_steps: 0`` (the default) runs no stage 1.
    """

    stage1_steps: int = 0
    stage1_lr: float = 0.01
    stage1_batch_size: int | None = None
    eval_every: int = 25
    save_every: int = 25

    def validate(self) -> None:
        if self.stage1_steps < 0:
            raise ConfigError(f"got {self.stage1_steps}; must be >= 0 (0: no attention transfer)", "stage1_steps")
        if self.stage1_lr <= 0:
            raise ConfigError(f"got {self.stage1_lr}; must be > 0", "stage1_lr")
        if self.stage1_batch_size is not None and self.stage1_batch_size < 1:
            raise ConfigError(f"got {self.stage1_batch_size}; must be >= 1 or null (trainer.batch_size)",
                              "stage1_batch_size")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"got {getattr(self, name)}; must be >= 1", name)


__all__ = ["ModelSection", "AdapterSection", "LearnerSpec", "DataSection", "TrainerSection", "OpsSection",
           "TrackingSection", "RecoverySection"]
