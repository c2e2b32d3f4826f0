"""The typed run configuration: dataclass sections, YAML files, ``key.sub=value`` / ``--key.sub=value`` overrides.

Every error is a :class:`ConfigError` naming the file, the dotted key and what is allowed; the CLI turns it into
exit code 2 before any work starts. Saved configs carry the hybridtune version.

Example:
    >>> cfg = load_config(None, ["trainer.steps=5", "--adapter.r=4"])
    >>> (cfg.trainer.steps, cfg.adapter.r)
    (5, 4)
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ._version import __version__
from .config_schema import ConfigError, build, closest, field_type, to_dict
from .files import atomic_write_text

COVERAGE_LEVELS = ("ffn_act", "linear_inputs", "attention", "norms")


@dataclass
class ModelSection:
    """The base ANN: ``default`` (embedded SmolLM2-135M), a hub id, a local dir or a GGUF file."""

    name: str = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class ConversionSection:
    """How the ANN becomes a frozen spiking model at T = 1 (see docs/architecture.md, the converted neuron)."""

    coverage: list[str] = field(default_factory=lambda: ["ffn_act", "linear_inputs"])
    neuron: Literal["graded", "if"] | None = None  # None: graded at timesteps 1, rate-coded IF above
    threshold: Literal["dynamic", "static"] = "dynamic"
    threshold_mode: Literal["mean_abs", "rms", "max_abs"] = "mean_abs"  # max_abs: static thresholds only
    divisor: float = 8.0
    attention_divisor: float | None = None  # None: divisor
    counting: Literal["base2", "unary"] = "base2"
    max_spikes: int | None = None
    phases: int | None = None  # K-phase code: |count| <= 2**K - 1, at most K weighted spikes (None: unbounded)
    outliers: list[str] = field(default_factory=list)  # outlier strategies, e.g. [rotate, hadamard_down]
    threshold_granularity: Literal["channel", "tensor"] = "channel"  # static thresholds per channel / per tensor
    compensation: bool = True
    softmax: Literal["keep", "nrelu", "spike"] = "keep"
    norms: Literal["keep", "threshold"] = "keep"
    calib_data: str = "python-docs"
    calib_tokens: int = 2048
    calib_block: int = 512
    timesteps: int = 1
    skip: list[str] = field(default_factory=list)  # module-name substrings whose linears stay float

    def validate(self) -> None:
        for i, level in enumerate(self.coverage):
            if level not in COVERAGE_LEVELS:
                raise ConfigError(f"got {level!r}; {closest(level, list(COVERAGE_LEVELS))}allowed: "
                                  f"{', '.join(COVERAGE_LEVELS)}", f"coverage[{i}]")
        if self.divisor <= 0:
            raise ConfigError(f"got {self.divisor}; must be > 0", "divisor")
        if self.max_spikes is not None and self.max_spikes < 1:
            raise ConfigError(f"got {self.max_spikes}; must be >= 1 or null (no cap)", "max_spikes")
        if self.timesteps < 1:
            raise ConfigError(f"got {self.timesteps}; must be >= 1", "timesteps")
        if self.phases is not None and not 1 <= self.phases <= 16:
            raise ConfigError(f"got {self.phases}; must be an integer in [1, 16] or null (unbounded)", "phases")
        if self.calib_tokens < 1:
            raise ConfigError(f"got {self.calib_tokens}; must be >= 1", "calib_tokens")
        if self.calib_block < 2:
            raise ConfigError(f"got {self.calib_block}; must be >= 2", "calib_block")
        if self.attention_divisor is not None and self.attention_divisor <= 0:
            raise ConfigError(f"got {self.attention_divisor}; must be > 0 or null (same as divisor)",
                              "attention_divisor")
        if self.neuron == "graded" and self.timesteps != 1:
            raise ConfigError(f"got timesteps={self.timesteps} with neuron: graded; graded neurons run at T = 1 "
                              "(use neuron: if for rate coding)", "timesteps")
        if self.threshold_mode == "max_abs" and self.threshold != "static":
            raise ConfigError("max_abs needs threshold: static (a per-token max would follow every outlier)",
                              "threshold_mode")


@dataclass
class AdapterSection:
    """Spiking LoRA: rank, scaling, targets and the bottleneck neuron strategy."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "up_proj", "down_proj"])
    neuron: Literal["mt", "lif", "heaviside"] = "mt"
    threshold: float = 0.05
    decay: float = 0.9
    max_spikes: int = 8
    surrogate: str = "atan"
    slope: float = 2.0
    init_b_std: float = 0.0

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
        import re

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
        import codecs

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
    gradient_checkpointing: bool = False

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
class RunConfig:
    """A whole run. ``hybridtune_version`` records which version wrote a saved config."""

    model: ModelSection = field(default_factory=ModelSection)
    conversion: ConversionSection = field(default_factory=ConversionSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    learners: list[LearnerSpec] = field(default_factory=lambda: [LearnerSpec()])
    data: DataSection = field(default_factory=DataSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    ops: OpsSection = field(default_factory=OpsSection)
    hybridtune_version: str = __version__

    def validate(self) -> None:
        if not self.learners:
            raise ConfigError("empty; give at least one learner (e.g. - name: surrogate)", "learners")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# The trainer section of the TrainConfig name in the Python API (``ht.TrainConfig``) is the whole run config.
TrainConfig = RunConfig


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` or ``--key.sub=value`` -> (dotted key, YAML-parsed value)."""
    text = item[2:] if item.startswith("--") else item
    if "=" not in text:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value (or --key.sub=value)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, _python_scalar(value)


_FLOAT = re.compile(r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf|nan)$", re.IGNORECASE)


def _python_scalar(value: Any) -> Any:
    """Undo what ``str()`` does to Python values on the way through W&B's ``${args}``.

    YAML 1.1 reads ``1e-05`` (no dot) and ``inf`` as strings, and ``str(None)`` is ``'None'``; sweeps produce all three.
    """
    if isinstance(value, str):
        if value == "None":
            return None
        if _FLOAT.match(value) and not value.isdigit():
            return float(value)
    return value


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if part.isdigit() and isinstance(node, list):
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"cannot set a sub-key of a value ({node!r})", dotted)
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


def _check_override_key(dotted: str) -> None:
    parts = [p for p in dotted.split(".") if not p.isdigit()]
    # learners.0.lr addresses an item of the learners list; check the rest against LearnerSpec
    if parts and parts[0] == "learners" and len(parts) > 1:
        field_type(LearnerSpec, ".".join(parts[1:]))
    else:
        field_type(RunConfig, ".".join(parts))


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", source=str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", source=str(p))
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML, optional), apply overrides in order, validate everything, return a :class:`RunConfig`."""
    source = str(path) if path else None
    data = read_yaml(path) if path else {}
    data = copy.deepcopy(data)
    if "learners" not in data:
        data["learners"] = [to_dict(LearnerSpec())]
    try:
        for item in overrides:
            key, value = parse_override(item)
            _check_override_key(key)
            _set_dotted(data, key, value)
        return build(RunConfig, data)
    except ConfigError as exc:
        raise exc.with_source(source if not exc.source else exc.source) from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (with the current hybridtune version) atomically, fsynced like every run file."""
    p = Path(path)
    data = to_dict(cfg)
    data["hybridtune_version"] = __version__
    atomic_write_text(p, yaml.safe_dump(data, sort_keys=False), "check the output directory")


__all__ = [
    "ConfigError", "RunConfig", "TrainConfig", "ModelSection", "ConversionSection", "AdapterSection", "LearnerSpec",
    "DataSection", "TrainerSection", "TrackingSection", "load_config", "save_config", "parse_override", "read_yaml",
    "COVERAGE_LEVELS", "to_dict",
]
