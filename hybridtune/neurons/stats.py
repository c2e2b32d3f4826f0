"""Spike statistics a spiking module accumulates while ``.stats`` is set, and the guard against double counting.

Example:
    >>> s = SpikeStats()
    >>> s.record(spikes=6, silent=1, neuron_steps=4, fan_out=10)
    >>> s += SpikeStats(spikes=2.0, neuron_steps=4, silent=3, sops=20.0)
    >>> s.spikes, s.neuron_steps, s.silent, s.sops, s.spikes_per_neuron, s.silent_share
    (8.0, 8, 4, 80.0, 1.0, 0.5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass
class SpikeStats:
    """Totals over the forwards seen: spikes, neuron-steps, silent neuron-steps, synaptic ops (spikes x fan-out).

    A neuron-step is one neuron at one model step (one token at T = 1). Supports ``+=`` / ``+`` to aggregate.
    """

    spikes: float = 0.0
    neuron_steps: int = 0
    silent: int = 0
    sops: float = 0.0
    unary_spikes: float = 0.0  # the same counts under unary counting (|q| spikes per neuron); equals spikes if unary

    def record(self, spikes: Tensor | float, silent: Tensor | int, neuron_steps: int, fan_out: int = 1,
               unary: Tensor | float | None = None) -> None:
        """Add one forward's counts (0-d tensors are read with a single host transfer).

        ``unary`` is the spike total under unary counting when ``spikes`` counts otherwise (base-2); None: equal.
        """
        unary = spikes if unary is None else unary
        if isinstance(spikes, Tensor) or isinstance(silent, Tensor) or isinstance(unary, Tensor):
            triple = torch.stack([torch.as_tensor(spikes, dtype=torch.float64),
                                  torch.as_tensor(silent, dtype=torch.float64),
                                  torch.as_tensor(unary, dtype=torch.float64)]).tolist()
            spikes, silent, unary = triple[0], int(triple[1]), triple[2]
        self.unary_spikes += float(unary)
        self.spikes += float(spikes)
        self.silent += int(silent)
        self.neuron_steps += int(neuron_steps)
        self.sops += float(spikes) * fan_out

    def __iadd__(self, other: SpikeStats) -> SpikeStats:
        if not isinstance(other, SpikeStats):
            return NotImplemented
        self.spikes += other.spikes
        self.neuron_steps += other.neuron_steps
        self.silent += other.silent
        self.sops += other.sops
        self.unary_spikes += other.unary_spikes
        return self

    def __add__(self, other: SpikeStats) -> SpikeStats:
        if not isinstance(other, SpikeStats):
            return NotImplemented
        out = SpikeStats(**asdict(self))
        out += other
        return out

    @property
    def spikes_per_neuron(self) -> float:
        """Mean spikes per neuron-step (the firing rate; SOP/MAC at T = 1)."""
        return self.spikes / self.neuron_steps if self.neuron_steps else 0.0

    @property
    def spikes_per_neuron_unary(self) -> float:
        """Mean spikes per neuron-step under unary counting (``|count|`` spikes; the divisor's scale by construction)."""
        return self.unary_spikes / self.neuron_steps if self.neuron_steps else 0.0

    @property
    def silent_share(self) -> float:
        """Share of neuron-steps that emitted no spike."""
        return self.silent / self.neuron_steps if self.neuron_steps else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "spikes_per_neuron": self.spikes_per_neuron,
                "spikes_per_neuron_unary": self.spikes_per_neuron_unary, "silent_share": self.silent_share}


def recomputing() -> bool:
    """True while the autograd engine is running a backward pass on this thread.

    Gradient checkpointing (reentrant or not) re-runs the forward inside backward; a forward seen there is a
    recomputation of one already counted, so spiking modules skip their statistics. No legitimate first forward
    runs inside a backward pass.
    """
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def record_spikes(stats: SpikeStats | None, s: Tensor, fan_out: int, counts: Tensor | None = None) -> None:
    """Add a forward's spike tensor ``s`` to ``stats`` (skipped when None or recomputing).

    ``counts`` is the spikes per neuron when it differs from ``|s|`` (base-2 counting); ``s == 0`` marks silence.
    """
    if stats is None or recomputing():
        return
    with torch.no_grad():
        c = counts if counts is not None else s.abs()
        # Row sums first, in the counts' own dtype (fast and exact: a row holds at most a few 1e4 * C spikes),
        # then the few row totals in float64. A float64 or int64 sum over the whole tensor is ~50x slower on CPU.
        rows = c.sum(-1, dtype=torch.int32) if not c.is_floating_point() else c.sum(-1)
        spikes = rows.sum(dtype=torch.float64)
        unary = None if counts is None else s.abs().sum(-1).sum(dtype=torch.float64)
        silent = s.numel() - torch.count_nonzero(s)
        stats.record(spikes, silent, s.numel(), fan_out, unary)
