"""Spike counting, the op census (SOPs and what stays float), energy under two conventions, JSON + PNG reports.

Memory traffic is not modelled; every report says so.

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, DynamicThreshold
    >>> net = torch.nn.Sequential(GradedNeuron(DynamicThreshold("mean_abs", 4.0)))
    >>> with count_spikes(net) as stats:
    ...     _ = net(torch.randn(3, 8))
    >>> stats["0"].neuron_steps
    24
"""

from __future__ import annotations

from .census import Census, CountsOwnOps, OpCount, count_ops, layer_of, norm_cost
from .energy import (
    CONVENTIONS,
    NOT_MODELLED,
    Convention,
    ann_energy_pj,
    breakeven_spikes_per_neuron,
    energy_pj,
    energy_ratio,
    get_convention,
    int_convention,
)
from .report import DEFINITIONS, build_report, energy_report, format_report, load_report, plot_report, write_report
from .stats import count_spikes, spiking_modules, total_stats

__all__ = [
    "CONVENTIONS",
    "DEFINITIONS",
    "NOT_MODELLED",
    "Census",
    "Convention",
    "CountsOwnOps",
    "OpCount",
    "ann_energy_pj",
    "breakeven_spikes_per_neuron",
    "build_report",
    "count_ops",
    "count_spikes",
    "energy_pj",
    "energy_ratio",
    "energy_report",
    "format_report",
    "get_convention",
    "int_convention",
    "layer_of",
    "load_report",
    "norm_cost",
    "plot_report",
    "spiking_modules",
    "total_stats",
    "write_report",
]
