"""``count_spikes``: attach a fresh ``SpikeStats`` to every spiking module for the duration of a block.

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, StaticThreshold
    >>> net = torch.nn.Sequential(GradedNeuron(StaticThreshold(torch.tensor(1.0))))
    >>> with count_spikes(net) as stats:
    ...     _ = net(torch.tensor([0.2, 2.0, -3.0]))
    >>> stats["0"].spikes, stats["0"].silent, net[0].stats is None
    (5.0, 1, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..neurons import SpikeStats


def spiking_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that accumulates spike statistics (has a ``stats`` attribute that is None or SpikeStats)."""
    return {name: m for name, m in model.named_modules()
            if "stats" in vars(m) and (m.stats is None or isinstance(m.stats, SpikeStats))}


@contextmanager
def count_spikes(model: nn.Module) -> Iterator[dict[str, SpikeStats]]:
    """Yield ``{module name: SpikeStats}`` filled by every forward inside the block; previous stats are restored."""
    modules = spiking_modules(model)
    saved = {name: m.stats for name, m in modules.items()}
    stats = {name: SpikeStats() for name in modules}
    for name, m in modules.items():
        m.stats = stats[name]
    try:
        yield stats
    finally:
        for name, m in modules.items():
            m.stats = saved[name]


def total_stats(stats: dict[str, SpikeStats]) -> SpikeStats:
    """Sum of all modules' statistics.

    Example:
        >>> total_stats({"a": SpikeStats(2.0, 4, 1, 8.0), "b": SpikeStats(1.0, 4, 3, 1.0)}).spikes_per_neuron
        0.375
    """
    out = SpikeStats()
    for s in stats.values():
        out += s
    return out
