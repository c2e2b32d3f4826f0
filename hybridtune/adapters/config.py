"""``SpikingLoraConfig``: a peft ``LoraConfig`` plus the bottleneck neuron strategy (``lif | mt | heaviside``).

The neuron is a small dataclass (``LIFStrategy``, ``MultiThresholdStrategy``, ``HeavisideStrategy``) saved inside
``adapter_config.json`` under ``"neuron"``; the surrogate comes from :mod:`hybridtune.neurons.surrogates` by name.
peft never saves custom-module registrations; :func:`SpikingLoraConfig.__post_init__` registers
``SpikingLoraLinear`` for ``nn.Linear`` (``SpikingLinear`` is one) and transformers' ``Conv1D`` every time a config is
built, including when :func:`hybridtune.adapters.load` rebuilds it from disk.

Example:
    >>> from hybridtune.adapters import SpikingLoraConfig, LIFStrategy
    >>> cfg = SpikingLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], neuron=LIFStrategy(decay=0.8))
    >>> cfg.neuron.kind, cfg.neuron.decay, cfg.to_dict()["neuron"]["kind"]
    ('lif', 0.8, 'lif')
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import LoraConfig

from hybridtune.config import AdapterSection
from hybridtune.config_schema import ConfigError, build, closest

# The peft method spiking LoRA is registered under (hybridtune.adapters.model fills peft's public mappings): saved in
# adapter_config.json, so peft builds a SpikingLoraConfig from it, and a plain peft without hybridtune fails loudly
# (KeyError naming it) instead of silently building ordinary LoRA without the neurons.
SPIKING_LORA = "HYBRIDTUNE_SPIKING_LORA"
# the "peft_type" adapters saved before the registration carry (hybridtune.adapters.load still reads them)
PEFT_TYPE_MARKER = (
    "HYBRIDTUNE_SPIKING_LORA: load with hybridtune.adapters.load(model, path); "
    "plain PeftModel.from_pretrained would drop the spiking neurons"
)


@dataclass
class NeuronStrategy:
    """Common settings of the bottleneck neuron: initial threshold (learnable unless ``learn_threshold=False``),
    surrogate name + slope (from the neurons registry)."""

    kind: str = field(default="", init=False)
    threshold: float = 0.05
    learn_threshold: bool = True
    surrogate: str = "atan"
    slope: float = 2.0

    @property
    def op_max_spikes(self) -> int:
        """Cap passed to the op (mt only; 0 = none)."""
        return 0

    @property
    def stateful(self) -> bool:
        return False

    def validate(self) -> None:
        from hybridtune.neurons.surrogates import get_surrogate

        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"neuron.threshold={self.threshold} must be a positive finite number")
        get_surrogate(self.surrogate, self.slope)  # raises naming the available surrogates

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LIFStrategy(NeuronStrategy):
    """Leaky integrate-and-fire over the token axis: ``v = decay * v + h``, spike when ``v > threshold``, soft reset.
    ``decay`` in (0, 1] (learnable unless ``learn_decay=False``); state resets at document starts / padding."""

    kind: str = field(default="lif", init=False)
    threshold: float = 0.05
    decay: float = 0.9
    learn_decay: bool = True

    @property
    def stateful(self) -> bool:
        return True

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"neuron.decay={self.decay} must lie in (0, 1]")


@dataclass
class MultiThresholdStrategy(NeuronStrategy):
    """Memoryless graded multi-threshold: ``s = clamp(round(h / threshold), -n, n)``, ``y = s * threshold``."""

    kind: str = field(default="mt", init=False)
    max_spikes: int = 8

    @property
    def op_max_spikes(self) -> int:
        return self.max_spikes

    def validate(self) -> None:
        super().validate()
        if self.max_spikes < 0:
            raise ValueError(f"neuron.max_spikes={self.max_spikes} must be >= 0 (0 = no cap)")


@dataclass
class HeavisideStrategy(NeuronStrategy):
    """Memoryless binary: ``s = H(h - threshold)``, ``y = s``."""

    kind: str = field(default="heaviside", init=False)


STRATEGIES: dict[str, type[NeuronStrategy]] = {
    "lif": LIFStrategy,
    "mt": MultiThresholdStrategy,
    "heaviside": HeavisideStrategy,
}


def neuron_strategy(kind: str | NeuronStrategy | dict, **kwargs: Any) -> NeuronStrategy:
    """Build a strategy from a name (+ fields), a dict with ``kind`` (as saved), or pass one through.

    ``max_spikes=None`` (the run config's "no cap") becomes 0; it is ignored by neurons other than ``mt``.

    Example:
        >>> neuron_strategy("mt", threshold=0.1, max_spikes=4)
        MultiThresholdStrategy(kind='mt', threshold=0.1, learn_threshold=True, surrogate='atan', slope=2.0, \
max_spikes=4)
    """
    if isinstance(kind, NeuronStrategy):
        if kwargs:
            raise ValueError("pass either a NeuronStrategy or field overrides, not both")
        return kind
    if isinstance(kind, dict):
        kwargs = {**kind, **kwargs}
        kind = kwargs.pop("kind", None)
    cls = STRATEGIES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"neuron={kind!r} is not a bottleneck neuron; choose one of {', '.join(STRATEGIES)}")
    if "max_spikes" in kwargs:
        cap = kwargs.pop("max_spikes")
        if cls is MultiThresholdStrategy:
            kwargs["max_spikes"] = 0 if cap is None else int(cap)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(f"neuron {kind!r} has no field(s) {unknown}; valid: {sorted(names)}")
    strategy = cls(**kwargs)
    strategy.validate()
    return strategy


# Base-layer type -> spiking LoRA layer, filled by :mod:`hybridtune.adapters.layer` when it is imported (the package
# imports it first): peft dispatches the layers it wraps through this mapping on every config.
SPIKING_MODULES: dict[type, type] = {}


@dataclass
class SpikingLoraConfig(LoraConfig):
    """peft ``LoraConfig`` with ``neuron`` (a :class:`NeuronStrategy`, name or dict) and ``init_b_std``.

    ``init_b_std > 0`` draws ``lora_B ~ N(0, init_b_std)`` instead of zeros, so local (STDP-style) learners see a
    nonzero output path from the first step. Merging is impossible (see ``SpikingLoraLinear.merge``), so peft's
    weight-variant options (``use_dora``, ...) are rejected.
    """

    neuron: Any = field(default_factory=MultiThresholdStrategy)
    init_b_std: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SPIKING_LORA  # LoraConfig.__post_init__ set LORA
        self.neuron = neuron_strategy(self.neuron)
        if self.init_b_std < 0:
            raise ValueError(f"init_b_std={self.init_b_std} must be >= 0")
        if self.use_dora:
            raise ValueError(
                "use_dora=True is not supported by spiking LoRA (the adapter output is not a weight delta)")
        if not SPIKING_MODULES:
            raise RuntimeError("hybridtune.adapters.layer registers the spiking LoRA layers; import hybridtune.adapters")
        self._register_custom_module(dict(SPIKING_MODULES))

    @classmethod
    def from_adapter_dir(cls, path: str | Path) -> SpikingLoraConfig:
        """Rebuild the config from ``path/adapter_config.json`` as hybridtune saved it (peft's own
        ``from_pretrained`` would return a plain ``LoraConfig`` without the neuron)."""
        file = Path(path) / "adapter_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no adapter_config.json in {path}; is this a saved adapter directory?")
        from hybridtune.files import read_json

        data = read_json(file, "save the adapter again (the training run writes it at the end; --resume completes it)")
        if not isinstance(data, dict) or "neuron" not in data:
            raise ValueError(
                f"{file} has no 'neuron' entry: it is a plain peft LoRA adapter, not a spiking one; load it with "
                "peft.PeftModel.from_pretrained"
            )
        data["peft_type"] = "LORA"
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"{file}: ignoring keys this peft version does not know: {unknown}", stacklevel=2)
        kwargs = {k: v for k, v in data.items() if k in names and k != "peft_type"}
        return cls(**kwargs)


def lora_config(section: AdapterSection, **lora_kwargs: Any) -> SpikingLoraConfig:
    """The peft config of an :class:`~hybridtune.config.AdapterSection` (the run config's ``adapter:`` section, the
    one adapter config): every field is used; ``lora_kwargs`` are further ``LoraConfig`` options (e.g. ``bias``).

    Example:
        >>> cfg = lora_config(AdapterSection(r=4, neuron="lif", decay=0.8, target_modules=["c_attn"]))
        >>> cfg.r, cfg.lora_alpha, cfg.neuron.kind, cfg.neuron.decay
        (4, 16.0, 'lif', 0.8)
    """
    fields_: dict[str, Any] = dict(threshold=section.threshold, surrogate=section.surrogate, slope=section.slope,
                                   learn_threshold=section.learn_threshold)
    if section.neuron == "lif":
        fields_.update(decay=section.decay, learn_decay=section.learn_decay)
    elif section.neuron == "mt":
        fields_["max_spikes"] = section.max_spikes
    return SpikingLoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                             target_modules=list(section.target_modules), neuron=neuron_strategy(section.neuron, **fields_),
                             init_b_std=section.init_b_std, **lora_kwargs)


def spiking_lora_config(**fields: Any) -> SpikingLoraConfig:
    """Flat constructor: the fields of :class:`~hybridtune.config.AdapterSection` (``r``, ``alpha``, ``dropout``,
    ``target_modules``, ``neuron``, ``threshold``, ``decay``, ``max_spikes``, ``surrogate``, ``slope``,
    ``init_b_std``, ``learn_threshold``, ``learn_decay``) plus ``LoraConfig`` options; anything else is a
    :class:`~hybridtune.config_schema.ConfigError` naming the key and the valid ones.

    Example:
        >>> cfg = spiking_lora_config(r=4, neuron="lif", threshold=0.5, target_modules=["c_attn"])
        >>> cfg.r, cfg.neuron.kind, cfg.neuron.threshold
        (4, 'lif', 0.5)
    """
    names = {f.name for f in dataclasses.fields(AdapterSection)}
    lora_names = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"r", "lora_alpha", "lora_dropout",
                                                                                "target_modules"}
    unknown = sorted(set(fields) - names - lora_names)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; {closest(unknown[0], sorted(names))}valid keys: "
                          f"{', '.join(sorted(names))} (or a peft LoraConfig option)", "adapter")
    section = build(AdapterSection, {k: v for k, v in fields.items() if k in names}, "adapter")
    return lora_config(section, **{k: v for k, v in fields.items() if k not in names})
