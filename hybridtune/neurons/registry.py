"""Registry of neuron kinds by name, open to third parties (``register_neuron``); no instances are tracked.

Example:
    >>> from hybridtune.neurons import make_neuron
    >>> make_neuron("graded", mode="rms", divisor=16.0, counting="base2")
    GradedNeuron(
      max_spikes=None, counting='base2', fan_out=1
      (threshold): DynamicThreshold(mode='rms', divisor=16.0)
    )
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .graded import GradedNeuron
from .lif import IFNeuron, LIFNeuron, RateCodedIF
from .thresholds import DynamicThreshold, StaticThreshold

NeuronFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, NeuronFactory] = {}


def register_neuron(name: str, factory: NeuronFactory, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> nn.Module`` under ``name``.

    Example:
        >>> register_neuron("my_relu", lambda **kw: nn.ReLU())
        >>> make_neuron("my_relu")
        ReLU()
    """
    if not callable(factory):
        raise TypeError(f"neuron factory for {name!r} must be callable; got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"neuron kind {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def available_neurons() -> list[str]:
    return sorted(_REGISTRY)


def make_neuron(name: str, **kwargs: Any) -> nn.Module:
    """Build a neuron of kind ``name`` (see ``available_neurons()``) with keyword arguments for its factory."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown neuron kind {name!r}; available: {', '.join(available_neurons())}")
    return factory(**kwargs)


def _threshold(theta: Tensor | float | None, mode: str, divisor: float, eps: float):
    return DynamicThreshold(mode, divisor, eps) if theta is None else StaticThreshold(theta)


def _graded(theta: Tensor | float | None = None, mode: str = "mean_abs", divisor: float = 8.0, eps: float = 1e-12,
            max_spikes: int | None = None, counting: str = "unary") -> GradedNeuron:
    """``theta`` given: static threshold; otherwise dynamic per-token (``mode``, ``divisor``)."""
    return GradedNeuron(_threshold(theta, mode, divisor, eps), max_spikes=max_spikes, counting=counting)


def _rate_if(num_steps: int, theta: Tensor | float | None = None, mode: str = "mean_abs", divisor: float = 1.0,
             eps: float = 1e-12) -> RateCodedIF:
    return RateCodedIF(_threshold(theta, mode, divisor, eps), num_steps)


register_neuron("graded", _graded)
register_neuron("rate_if", _rate_if)
register_neuron("if", IFNeuron)
register_neuron("lif", LIFNeuron)
