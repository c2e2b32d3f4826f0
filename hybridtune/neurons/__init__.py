"""Neuron models and surrogate glue: pure functions in ``functional``, thin stateful modules on top.

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, DynamicThreshold, SpikingLinear, SpikeStats
    >>> layer = SpikingLinear.from_linear(torch.nn.Linear(8, 4), GradedNeuron(DynamicThreshold("rms", 8.0),
    ...                                                                         counting="base2"))
    >>> layer.encoder.stats = SpikeStats()
    >>> layer(torch.randn(2, 8)).shape, layer.encoder.stats.neuron_steps, layer.encoder.fan_out
    (torch.Size([2, 4]), 16, 4)
"""

from __future__ import annotations

from . import functional, surrogates
from .encoders import ENCODINGS, encode, encode_direct, encode_latency, encode_rate
from .functional import (
    dynamic_threshold,
    expected_residual,
    fires,
    fold_compensation,
    graded_quantize,
    if_rate_count,
    if_sequence,
    if_step,
    lif_sequence,
    lif_step,
    phase_bound,
    phase_quantize,
    phase_spikes,
    popcount,
    spike_count,
)
from .graded import FirstTokenSwitch, GradedNeuron
from .lif import IFNeuron, LIFNeuron, RateCodedIF
from .linear import SpikingLinear
from .registry import available_neurons, make_neuron, register_neuron
from .stateful import StatefulNeuron, reset_state
from .stats import SpikeStats, recomputing, record_spikes
from .surrogates import Surrogate, available_surrogates, get_surrogate, register_surrogate
from .thresholds import (
    PER_TOKEN_THRESHOLDS,
    ChannelCalibrator,
    ChannelScaledThreshold,
    ClipFreeThreshold,
    DynamicThreshold,
    GroupedThreshold,
    StaticThreshold,
    ThresholdStrategy,
    calibrate_static_threshold,
)

__all__ = [
    "ChannelCalibrator",
    "ChannelScaledThreshold",
    "ClipFreeThreshold",
    "ENCODINGS",
    "DynamicThreshold",
    "FirstTokenSwitch",
    "GradedNeuron",
    "GroupedThreshold",
    "IFNeuron",
    "LIFNeuron",
    "PER_TOKEN_THRESHOLDS",
    "RateCodedIF",
    "SpikeStats",
    "SpikingLinear",
    "StatefulNeuron",
    "StaticThreshold",
    "Surrogate",
    "ThresholdStrategy",
    "available_neurons",
    "available_surrogates",
    "calibrate_static_threshold",
    "dynamic_threshold",
    "encode",
    "encode_direct",
    "encode_latency",
    "encode_rate",
    "expected_residual",
    "fold_compensation",
    "functional",
    "get_surrogate",
    "graded_quantize",
    "fires",
    "if_rate_count",
    "if_sequence",
    "if_step",
    "lif_sequence",
    "lif_step",
    "make_neuron",
    "phase_bound",
    "phase_quantize",
    "phase_spikes",
    "popcount",
    "recomputing",
    "record_spikes",
    "register_neuron",
    "register_surrogate",
    "reset_state",
    "spike_count",
    "surrogates",
]
