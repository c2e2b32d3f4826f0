"""``ConversionConfig``: what becomes spike-driven and with which neuron, validated before any work starts.

Example:
    >>> cfg = ConversionConfig(coverage=("ffn_act", "linear_inputs"), divisor=8.0, counting="base2")
    >>> cfg.validate().neuron, cfg.cap
    ('graded', None)
    >>> ConversionConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

COVERAGE_LEVELS = ("ffn_act", "linear_inputs", "attention", "norms")
NEURONS = ("graded", "if")
THRESHOLDS = ("dynamic", "static")
DYNAMIC_MODES = ("mean_abs", "rms")
STATIC_MODES = ("mean_abs", "rms", "max_abs")
COUNTINGS = ("unary", "base2")
GRANULARITIES = ("channel", "tensor")
SOFTMAX = ("keep", "nrelu", "spike")
NORMS = ("keep", "threshold")


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ValueError(f"conversion.{key}={value!r} is not valid; choose one of {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class ConversionConfig:
    """How an ANN becomes a frozen spiking model (docs/architecture.md, the converted neuron).

    Attributes:
        coverage: what becomes spike-driven, a subset of ``("ffn_act", "linear_inputs", "attention", "norms")``.
            ``ffn_act``: the FFN activation output (SiLU / GELU gate) is encoded as graded spikes, so the gate
            product with ``up`` is count x value (GPT-2: the GELU output feeds ``c_proj`` as spikes).
            ``linear_inputs``: every linear layer (attention and FFN projections, experts, router, ``lm_head``)
            consumes spikes; inputs shared by several linears (q/k/v after one norm) are encoded once.
            ``attention``: the query and the attention probabilities are encoded, so ``QK^T`` and ``PV`` are
            spike-driven; ``softmax`` says what computes the probabilities.
            ``norms``: a norm feeding linears is realised as per-token threshold adaptation
            (``theta_t = rms(x_t) / divisor``; its gain and bias folded into the consumers); needs ``linear_inputs``.
        neuron: ``"graded"`` (multi-threshold, T = 1) or ``"if"`` (rate-coded integrate-and-fire over
            ``timesteps`` steps, soft reset, closed form; the T > 1 baseline).
        timesteps: T; must be 1 for graded neurons.
        threshold: ``"dynamic"`` (per token: ``stat(v_t) / divisor``) or ``"static"`` (per channel, calibrated).
        threshold_mode: the statistic; dynamic: ``mean_abs`` | ``rms``; static: also ``max_abs``.
        divisor: resolution; theta = statistic / divisor (larger = finer, more spikes).
        counting: ``"base2"`` (one spike per power of two of the count: shifted accumulates) or ``"unary"``.
        max_spikes: cap on ``|count|`` (None: no cap; outlier channels reach ~2e4 and a cap clips them).
        phases: K-phase code: the count saturates at ``2**K - 1`` and is sent as at most K weighted spikes (phase
            k weighs 2^k); sets the cap (give ``phases`` or ``max_spikes``). None: unbounded (a reference only).
        outliers: outlier-handling strategies applied before calibration, in order, by registered name (see
            ``hybridtune.conversion.outliers``): e.g. ``("rotate", "hadamard_down")``; () for none.
        threshold_granularity: static thresholds per ``"channel"`` (``[C]``) or per ``"tensor"`` (one scalar).
        compensation: fold the calibrated mean residual ``E[v - q theta]`` into the next layer's bias where it
            is foldable (linear consumers; not the SwiGLU product).
        softmax: with ``attention``: ``"keep"`` (float softmax), ``"nrelu"`` (``relu(s) / sum relu(s)``) or
            ``"spike"`` (normalisation-free: ``relu(s) / n_visible``, the spike-driven self-attention form).
        norms: with ``norms`` in coverage: ``"threshold"``; ``"keep"`` contradicts it.
        attention_divisor: divisor for the attention encoders (None: ``divisor``).
        calib_tokens: tokens of calibration text (static thresholds, compensation), taken deterministically.
        calib_block: block length of the calibration forwards.
        skip: module-name substrings whose linears stay float (e.g. ``("lm_head",)``).
    """

    coverage: tuple[str, ...] = ("ffn_act", "linear_inputs")
    neuron: str = "graded"
    timesteps: int = 1
    threshold: str = "dynamic"
    threshold_mode: str = "mean_abs"
    divisor: float = 8.0
    counting: str = "base2"
    max_spikes: int | None = None
    phases: int | None = None
    outliers: tuple[str, ...] = ()
    threshold_granularity: str = "channel"
    compensation: bool = False
    softmax: str = "keep"
    norms: str = "threshold"
    attention_divisor: float | None = None
    calib_tokens: int = 2048
    calib_block: int = 512
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # lists from YAML / JSON become tuples so the config stays hashable and compares equal after a round trip
        object.__setattr__(self, "coverage", tuple(self.coverage))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "outliers", tuple(self.outliers))

    def validate(self) -> ConversionConfig:
        """Check every field (raises ``ValueError`` naming the key and what is allowed); returns self."""
        for level in self.coverage:
            _choice(level, COVERAGE_LEVELS, "coverage[]")
        if len(set(self.coverage)) != len(self.coverage):
            raise ValueError(f"conversion.coverage={list(self.coverage)} lists a level twice")
        _choice(self.neuron, NEURONS, "neuron")
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise ValueError(f"conversion.timesteps={self.timesteps!r} must be an integer >= 1")
        if self.neuron == "graded" and self.timesteps != 1:
            raise ValueError(f"conversion.timesteps={self.timesteps}: graded neurons run at T = 1; use neuron='if' "
                             "for the rate-coded T > 1 baseline")
        _choice(self.threshold, THRESHOLDS, "threshold")
        _choice(self.threshold_mode, DYNAMIC_MODES if self.threshold == "dynamic" else STATIC_MODES,
                "threshold_mode")
        for key in ("divisor", "attention_divisor"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"conversion.{key}={value!r} must be a number > 0")
        _choice(self.counting, COUNTINGS, "counting")
        if self.neuron == "if" and self.counting != "unary":
            raise ValueError("conversion.counting: rate-coded IF neurons emit one spike per step; use 'unary'")
        if self.max_spikes is not None and (not isinstance(self.max_spikes, int) or self.max_spikes < 1):
            raise ValueError(f"conversion.max_spikes={self.max_spikes!r} must be an integer >= 1 or None (no cap)")
        if self.neuron == "if" and self.max_spikes is not None:
            raise ValueError("conversion.max_spikes: a rate-coded IF neuron is capped by T itself; leave it None")
        if self.phases is not None:
            if not isinstance(self.phases, int) or isinstance(self.phases, bool) or not 1 <= self.phases <= 16:
                raise ValueError(f"conversion.phases={self.phases!r} must be an integer in [1, 16] or None")
            if self.neuron != "graded":
                raise ValueError("conversion.phases: K-phase codes are graded (T = 1) neurons; use neuron='graded'")
            if self.max_spikes is not None and self.max_spikes != (1 << self.phases) - 1:
                raise ValueError(f"conversion.phases={self.phases} sets the cap to {(1 << self.phases) - 1}; "
                                 f"max_spikes={self.max_spikes} contradicts it (give one of the two)")
        _choice(self.threshold_granularity, GRANULARITIES, "threshold_granularity")
        # strategy names are checked where they are looked up (convert(); `hybridtune validate` before any work)
        if len(set(self.outliers)) != len(self.outliers):
            raise ValueError(f"conversion.outliers={list(self.outliers)} lists a strategy twice")
        _choice(self.softmax, SOFTMAX, "softmax")
        if self.softmax != "keep" and "attention" not in self.coverage:
            raise ValueError(f"conversion.softmax={self.softmax!r} replaces softmax inside spiking attention; add "
                             "'attention' to conversion.coverage")
        _choice(self.norms, NORMS, "norms")
        if "norms" in self.coverage:
            if self.norms == "keep":
                raise ValueError("conversion.norms='keep' contradicts 'norms' in conversion.coverage; set "
                                 "norms='threshold' or drop 'norms' from the coverage")
            if "linear_inputs" not in self.coverage:
                raise ValueError("conversion.coverage: 'norms' realises a norm as the threshold of the encoder that "
                                 "feeds the next linears; it needs 'linear_inputs' too")
        if "attention" in self.coverage and self.neuron != "graded":
            raise ValueError("conversion.coverage: spiking attention is implemented for graded neurons (T = 1) only")
        for key in ("calib_tokens", "calib_block"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"conversion.{key}={value!r} must be an integer >= 1")
        return self

    @property
    def cap(self) -> int | None:
        """The bound on ``|count|``: ``2**phases - 1``, else ``max_spikes`` (None: unbounded)."""
        return (1 << self.phases) - 1 if self.phases is not None else self.max_spikes

    @property
    def activation_bits(self) -> int | None:
        """Bits of the signed integer a count needs: sign + magnitude (``1 + phases``); None when unbounded (a
        rate-coded IF neuron at T needs ``1 + ceil(log2(T + 1))``)."""
        if self.neuron == "if":
            return 1 + max(1, self.timesteps.bit_length())
        cap = self.cap
        return None if cap is None else 1 + max(1, cap.bit_length())

    @property
    def label(self) -> str:
        """Short human-readable neuron setting, e.g. ``graded-base2 mean_abs/8 dyn``."""
        if self.neuron == "if":
            return f"if-rate T={self.timesteps} {self.threshold} {self.threshold_mode}/{self.divisor:g}"
        comp = " +comp" if self.compensation else ""
        if self.phases is not None:
            cap = f" K{self.phases}"
        else:
            cap = f" cap{self.max_spikes}" if self.max_spikes is not None else ""
        tensor = " per-tensor" if self.threshold == "static" and self.threshold_granularity == "tensor" else ""
        outl = f" [{'+'.join(self.outliers)}]" if self.outliers else ""
        return (f"graded-{self.counting} {self.threshold}{tensor} {self.threshold_mode}/{self.divisor:g}{cap}{comp}"
                f"{outl}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["coverage"], data["skip"], data["outliers"] = list(self.coverage), list(self.skip), list(self.outliers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionConfig:
        """Build from a plain dict (e.g. saved JSON); unknown keys are an error naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown conversion key(s) {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**data)

    def with_(self, **changes: Any) -> ConversionConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


def from_section(section: Any) -> ConversionConfig:
    """Map the run config's ``conversion`` section (``hybridtune.config.ConversionSection``) to a config.

    Same field names where they exist; ``timesteps > 1`` selects the rate-coded IF neuron unless ``neuron`` is
    given; ``norms: threshold`` adds ``norms`` to the coverage and ``softmax`` other than ``keep`` adds
    ``attention`` (the section's defaults say *how*, the coverage says *what*).

    Example:
        >>> from types import SimpleNamespace
        >>> s = SimpleNamespace(coverage=["ffn_act"], timesteps=4, threshold="static", threshold_mode="max_abs",
        ...                     divisor=1.0, counting="base2", norms="keep", softmax="keep")
        >>> c = from_section(s)
        >>> c.neuron, c.timesteps, c.counting
        ('if', 4, 'unary')
    """
    names = {f.name for f in fields(ConversionConfig)}
    data = {k: v for k, v in vars(section).items() if k in names}
    coverage = list(data.get("coverage", ConversionConfig.coverage))
    if data.get("norms") == "threshold" and "norms" not in coverage:
        coverage.append("norms")
    if "norms" in coverage:
        data["norms"] = "threshold"
    if data.get("softmax", "keep") != "keep" and "attention" not in coverage:
        coverage.append("attention")
    data["coverage"] = tuple(coverage)
    for key in ("skip", "outliers"):
        if key in data and data[key] is not None:
            data[key] = tuple(data[key])
    if data.get("neuron") is None:
        data["neuron"] = "if" if int(data.get("timesteps", 1)) > 1 else "graded"
    if data["neuron"] == "if":
        data["counting"] = "unary"
        data["max_spikes"] = None
        data["phases"] = None
    return ConversionConfig(**data).validate()
