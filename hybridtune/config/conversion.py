"""``ConversionConfig``: what becomes spike-driven and with which neuron; the one conversion config.

``ht.convert(model)``, ``hybridtune convert`` and the trainer (the run config's ``conversion:`` section *is* this
class) share these fields and defaults. The defaults are the README's headline conversion: FFN activations and every
linear input, graded base-2 spikes at T = 1 with a bounded K = 8 phase code (a signed 9-bit count), per-token
threshold ``mean|v| / 8`` floored so the bound never clips (``clip_free``), with expectation compensation
(calibrated on ``calib_data``). ``phases: null`` gives the unbounded count, a reference only. Every error is a :class:`~hybridtune.config_schema.ConfigError` (a ``ValueError``)
naming ``conversion.<key>`` and what is allowed.

Example:
    >>> cfg = ConversionConfig(coverage=("ffn_act", "linear_inputs"), divisor=8.0, compensation=False)
    >>> cfg.validate().neuron, cfg.counting, cfg.cap, cfg.outliers
    ('graded', 'base2', 255, ('clip_free',))
    >>> ConversionConfig(phases=None).outliers, ConversionConfig(threshold="static").outliers
    ((), ())
    >>> ConversionConfig(timesteps=4).validate().neuron, ConversionConfig(timesteps=4).counting
    ('if', 'unary')
    >>> ConversionConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from hybridtune.config_schema import ConfigError, closest

COVERAGE_LEVELS = ("ffn_act", "linear_inputs", "attention", "norms")
NEURONS = ("graded", "if")
THRESHOLDS = ("dynamic", "static")
DYNAMIC_MODES = ("mean_abs", "rms")
STATIC_MODES = ("mean_abs", "rms", "max_abs")
COUNTINGS = ("unary", "base2")
GRANULARITIES = ("channel", "tensor")
SOFTMAX = ("keep", "nrelu", "spike", "relu_count", "relu_sum", "sigmoid", "relu_knots", "relu_knots_max")
RECOVERABLE_SOFTMAX = ("relu_count", "relu_sum", "sigmoid", "relu_knots", "relu_knots_max")  # with per-head parameters the recovery stage trains
NORMS = ("keep", "threshold")
KEY = "conversion"
DEFAULT_PHASES = 8  # K = 8: 1.015x the ANN at 1.75 spikes per neuron on the default model (conversion_clip_free.json)


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(message, f"{KEY}.{key}")


def _choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise _fail(key, f"got {value!r}; {closest(str(value), list(allowed))}allowed: "
                         f"{', '.join(map(repr, allowed))}")


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
            ``timesteps`` steps, soft reset, closed form; the T > 1 baseline). None: graded at ``timesteps: 1``,
            IF above.
        timesteps: T; must be 1 for graded neurons.
        threshold: ``"dynamic"`` (per token: ``stat(v_t) / divisor``) or ``"static"`` (per channel, calibrated).
        threshold_mode: the statistic; dynamic: ``mean_abs`` | ``rms``; static: also ``max_abs``.
        divisor: resolution; theta = statistic / divisor (larger = finer, more spikes).
        counting: ``"base2"`` (one spike per power of two of the count: shifted accumulates) or ``"unary"``.
            None: base2 for graded neurons, unary for IF (one spike per step).
        max_spikes: cap on ``|count|`` (None: no cap; outlier channels reach ~2e4 and a cap clips them).
        phases: K-phase code: the count saturates at ``2**K - 1`` and is sent as at most K weighted spikes (phase
            k weighs 2^k); sets the cap (give ``phases`` or ``max_spikes``). None: unbounded (a reference only).
            ``"auto"`` (the default): 8 for graded neurons without ``max_spikes``, else None (resolved once).
        outliers: outlier-handling strategies applied before calibration, in order, by registered name (see
            ``hybridtune.conversion.outliers``): e.g. ``("rotate", "hadamard_down")``; () for none. ``"auto"``
            (the default): ``("clip_free",)`` for a bounded graded code with dynamic thresholds, else () (resolved
            once, so a saved config says what ran).
        threshold_granularity: static thresholds per ``"channel"`` (``[C]``) or per ``"tensor"`` (one scalar).
        threshold_group: dynamic thresholds: channels that share one per-token threshold (e.g. 32: one threshold per
            token per group of 32 adjacent channels; it must divide every encoded width). None: one per token. Finer
            than per token where channels differ in scale, and charged: each consumer output rescales ``C / group``
            partial sums per token in float. Norm-as-threshold sites and spiking attention keep one per token.
        compensation: fold the calibrated mean residual ``E[v - q theta]`` into the next layer's bias where it
            is foldable (linear consumers; not the SwiGLU product). Needs calibration data.
        softmax: with ``attention``: ``"keep"`` (float softmax), ``"nrelu"`` (``relu(s) / sum relu(s)``),
            ``"spike"`` (normalisation-free: ``relu(s) / n_visible``, the spike-driven self-attention form), or one
            of the recoverable replacements with per-head parameters trained by the run config's ``recovery``
            stage: ``"relu_count"`` (``g relu(tau s + b) / n_visible``), ``"relu_sum"`` (``relu(tau s + b)`` over its
            row sum), ``"sigmoid"`` (``sigmoid(tau s + b - log n_visible)``), ``"relu_knots"`` (8 learnable
            thresholds and weights per head, ``sum_m a_m relu(s - c_m)`` over its row sum) or ``"relu_knots_max"``
            (the same on ``s`` minus the row's largest visible score: shift-invariant like softmax); see
            ``hybridtune.conversion.attention``.
        norms: how a covered norm is realised: ``"threshold"`` (the only way; it acts only with ``norms`` in the
            coverage); ``"keep"`` with ``norms`` in the coverage is a contradiction.
        attention_divisor: divisor for the attention encoders (None: ``divisor``).
        calib_data: the corpus calibrated on (train split) when ``convert`` is given no ``calib``.
        calib_tokens: tokens of calibration text (static thresholds, compensation), taken deterministically.
        calib_block: block length of the calibration forwards.
        skip: module-name substrings whose linears stay float (e.g. ``("lm_head",)``).
    """

    coverage: tuple[str, ...] = ("ffn_act", "linear_inputs")
    neuron: Literal["graded", "if"] | None = None
    timesteps: int = 1
    threshold: Literal["dynamic", "static"] = "dynamic"
    threshold_mode: Literal["mean_abs", "rms", "max_abs"] = "mean_abs"
    divisor: float = 8.0
    counting: Literal["base2", "unary"] | None = None
    max_spikes: int | None = None
    phases: int | None | Literal["auto"] = "auto"
    outliers: tuple[str, ...] | Literal["auto"] = "auto"
    threshold_granularity: Literal["channel", "tensor"] = "channel"
    threshold_group: int | None = None
    compensation: bool = True
    softmax: Literal["keep", "nrelu", "spike", "relu_count", "relu_sum", "sigmoid", "relu_knots",
                     "relu_knots_max"] = "keep"
    norms: Literal["keep", "threshold"] = "threshold"
    attention_divisor: float | None = None
    calib_data: str | None = "python-docs"
    calib_tokens: int = 2048
    calib_block: int = 512
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # lists from YAML / JSON become tuples so the config stays hashable and compares equal after a round trip
        for key in ("coverage", "skip", "outliers"):
            if getattr(self, key) != "auto":
                object.__setattr__(self, key, tuple(getattr(self, key)))
        # None = the natural choice for the other settings, resolved once so a saved config says what ran
        if self.neuron is None:
            object.__setattr__(self, "neuron", "if" if isinstance(self.timesteps, int) and self.timesteps > 1
                               else "graded")
        if self.counting is None:
            object.__setattr__(self, "counting", "unary" if self.neuron == "if" else "base2")
        if self.phases == "auto":  # the bounded default code; an explicit cap or an IF neuron needs none
            object.__setattr__(self, "phases", DEFAULT_PHASES if self.neuron == "graded" and self.max_spikes is None
                               else None)
        if self.outliers == "auto":  # a bounded dynamic code never clips its massive-activation tokens
            bounded = self.phases is not None or self.max_spikes is not None
            object.__setattr__(self, "outliers", ("clip_free",) if bounded and self.neuron == "graded"
                               and self.threshold == "dynamic" else ())

    def validate(self) -> ConversionConfig:
        """Check every field (raises :class:`ConfigError` naming ``conversion.<key>`` and what is allowed)."""
        for i, level in enumerate(self.coverage):
            _choice(level, COVERAGE_LEVELS, f"coverage[{i}]")
        if len(set(self.coverage)) != len(self.coverage):
            raise _fail("coverage", f"{list(self.coverage)} lists a level twice")
        _choice(self.neuron, NEURONS, "neuron")
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise _fail("timesteps", f"got {self.timesteps!r}; must be an integer >= 1")
        if self.neuron == "graded" and self.timesteps != 1:
            raise _fail("timesteps", f"got {self.timesteps} with neuron: graded; graded neurons run at T = 1 "
                                     "(use neuron: if for the rate-coded T > 1 baseline)")
        _choice(self.threshold, THRESHOLDS, "threshold")
        if self.threshold == "dynamic" and self.threshold_mode == "max_abs":
            raise _fail("threshold_mode", "max_abs needs threshold: static (a per-token max would follow every "
                                          f"outlier); dynamic thresholds allow {', '.join(DYNAMIC_MODES)}")
        _choice(self.threshold_mode, DYNAMIC_MODES if self.threshold == "dynamic" else STATIC_MODES,
                "threshold_mode")
        for key in ("divisor", "attention_divisor"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise _fail(key, f"got {value!r}; must be a number > 0" + (" or null (same as divisor)"
                                                                          if key == "attention_divisor" else ""))
        _choice(self.counting, COUNTINGS, "counting")
        if self.neuron == "if" and self.counting != "unary":
            raise _fail("counting", "rate-coded IF neurons emit one spike per step; use unary (or leave it null)")
        if self.max_spikes is not None and (not isinstance(self.max_spikes, int) or self.max_spikes < 1):
            raise _fail("max_spikes", f"got {self.max_spikes!r}; must be an integer >= 1 or null (no cap)")
        if self.neuron == "if" and self.max_spikes is not None:
            raise _fail("max_spikes", "a rate-coded IF neuron is capped by T itself; leave it null")
        if self.phases is not None:
            if not isinstance(self.phases, int) or isinstance(self.phases, bool) or not 1 <= self.phases <= 16:
                raise _fail("phases", f"got {self.phases!r}; must be an integer in [1, 16] or null (unbounded)")
            if self.neuron != "graded":
                raise _fail("phases", "K-phase codes are graded (T = 1) neurons; use neuron: graded")
            if self.max_spikes is not None and self.max_spikes != (1 << self.phases) - 1:
                raise _fail("phases", f"phases={self.phases} sets the cap to {(1 << self.phases) - 1}; "
                                      f"max_spikes={self.max_spikes} contradicts it (give one of the two)")
        _choice(self.threshold_granularity, GRANULARITIES, "threshold_granularity")
        if self.threshold_group is not None:
            if not isinstance(self.threshold_group, int) or isinstance(self.threshold_group, bool) \
                    or self.threshold_group < 1:
                raise _fail("threshold_group", f"got {self.threshold_group!r}; must be an integer >= 1 (channels per "
                                               "per-token threshold) or null (one per token)")
            if self.threshold != "dynamic":
                raise _fail("threshold_group", "groups share a per-token threshold; static thresholds are already "
                                               "per channel: use threshold: dynamic or leave threshold_group null")
        # strategy names are checked where they are looked up (convert(); `hybridtune validate` before any work)
        if len(set(self.outliers)) != len(self.outliers):
            raise _fail("outliers", f"{list(self.outliers)} lists a strategy twice")
        _choice(self.softmax, SOFTMAX, "softmax")
        if self.softmax != "keep" and "attention" not in self.coverage:
            raise _fail("softmax", f"{self.softmax!r} replaces softmax inside spiking attention; add 'attention' "
                                   "to conversion.coverage")
        _choice(self.norms, NORMS, "norms")
        if "norms" in self.coverage:
            if self.norms == "keep":
                raise _fail("norms", "'keep' contradicts 'norms' in conversion.coverage; set norms: threshold or "
                                     "drop 'norms' from the coverage")
            if "linear_inputs" not in self.coverage:
                raise _fail("coverage", "'norms' realises a norm as the threshold of the encoder that feeds the "
                                        "next linears; it needs 'linear_inputs' too")
        if "attention" in self.coverage and self.neuron != "graded":
            raise _fail("coverage", "spiking attention is implemented for graded neurons (T = 1) only")
        if self.calib_tokens < 1 if isinstance(self.calib_tokens, int) else True:
            raise _fail("calib_tokens", f"got {self.calib_tokens!r}; must be an integer >= 1")
        if self.calib_block < 2 if isinstance(self.calib_block, int) else True:
            raise _fail("calib_block", f"got {self.calib_block!r}; must be an integer >= 2")
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
        group = f" g{self.threshold_group}" if self.threshold_group else ""
        return (f"graded-{self.counting} {self.threshold}{tensor}{group} {self.threshold_mode}/{self.divisor:g}{cap}"
                f"{comp}{outl}")

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
            raise ConfigError(f"unknown conversion key(s) {unknown}; {closest(unknown[0], sorted(names))}valid keys: "
                              f"{', '.join(sorted(names))}", KEY)
        return cls(**data)

    def with_(self, **changes: Any) -> ConversionConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


__all__ = ["ConversionConfig", "COVERAGE_LEVELS"]
