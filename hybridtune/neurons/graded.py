"""The graded multi-threshold neuron for T = 1: one signed integer spike count per neuron per token.

Example:
    >>> import torch
    >>> from hybridtune.neurons import GradedNeuron, StaticThreshold, SpikeStats
    >>> n = GradedNeuron(StaticThreshold(torch.tensor(1.0)), counting="base2")
    >>> n.stats = SpikeStats()
    >>> n(torch.tensor([0.4, 1.6, -2.6, 7.0])).tolist()
    [0.0, 2.0, -3.0, 7.0]
    >>> n.stats.spikes, n.stats.silent, n.stats.neuron_steps
    (6.0, 1, 4)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .functional import COUNTINGS, _check_choice, graded_quantize, phase_bound, spike_count
from .stats import SpikeStats, record_spikes
from .thresholds import ThresholdStrategy


def _quantize_dequantize(
    v: Tensor, theta: Tensor, max_spikes: int | None, on_counts: Callable[[Tensor], None] | None
) -> Tensor:
    q = graded_quantize(v, theta, max_spikes)  # fresh tensor: safe to reuse in place below
    if on_counts is not None:
        on_counts(q)
    return q.mul_(theta)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``q * theta``. Backward: identity to ``v`` (straight-through), nothing to ``theta``."""

    @staticmethod
    def forward(ctx, v, theta, max_spikes, on_counts):  # noqa: D401 - autograd signature
        return _quantize_dequantize(v, theta, max_spikes, on_counts)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class FirstTokenSwitch:
    """Per-call switch of a graded neuron that passes the first token of a fresh sequence through in float.

    ``active`` is set for the duration of one model call by whoever knows the call's positions (conversion's
    ``float_sink`` strategy: a hook on the model, True iff the call starts at position 0, i.e. no KV cache holds
    tokens yet) and is False otherwise. A plain object, not state of the neuron: nothing of it is saved.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


class GradedNeuron(nn.Module):
    """Graded spiking neuron: ``q = clamp(round(v / theta), -n, n)``, returns ``q * theta`` (what the next layer sees).

    Args:
        threshold: a ``ThresholdStrategy`` (``StaticThreshold`` per channel, ``DynamicThreshold`` per token).
            ``nn.Module`` strategies are registered as the submodule ``threshold`` (their buffers save and move).
        max_spikes: cap ``n`` on ``|q|`` (None: no cap: an unbounded count, a reference only).
        phases: K-phase (bit-serial) code: ``max_spikes = 2**K - 1``, so a count is at most K weighted spikes
            (base-2) and saturates at the bound. Give ``phases`` or ``max_spikes``, not both.
        counting: ``"unary"`` (``|q|`` spikes) or ``"base2"`` (``popcount(|q|)`` spikes: thresholds theta,
            2 theta, 4 theta, ...). Counting changes the spike statistics, not the value.
        first_token: a :class:`FirstTokenSwitch`; while it is active, the first token of a ``[B, T, C]`` input
            (index 0 of the token axis) passes through unchanged in float and only tokens 1.. are encoded and
            counted (the consumer's float work on it is charged by the accounting census). None: every token spikes.

    The backward is straight-through (identity to ``v``) so adapters in earlier layers receive gradients; the
    threshold gets none. When ``stats`` is a ``SpikeStats``, each forward adds its spikes, neuron-steps, silent
    neuron-steps and SOPs (``spikes * fan_out``) -- except forwards re-run by gradient checkpointing inside the
    backward pass (see ``stats.recomputing``). ``fan_out`` is set by the layer that consumes the spikes.

    Example:
        >>> from hybridtune.neurons import DynamicThreshold
        >>> GradedNeuron(DynamicThreshold("mean_abs", divisor=2.0))(torch.tensor([[1.0, -3.0]])).tolist()
        [[1.0, -3.0]]
    """

    def __init__(self, threshold: ThresholdStrategy, max_spikes: int | None = None, counting: str = "unary",
                 phases: int | None = None, first_token: FirstTokenSwitch | None = None):
        super().__init__()
        if phases is not None:
            if max_spikes is not None and max_spikes != phase_bound(phases):
                raise ValueError(f"give phases ({phases}: cap {phase_bound(phases)}) or max_spikes ({max_spikes}), "
                                 "not both")
            max_spikes = phase_bound(phases)
        if not callable(threshold):
            raise TypeError(f"threshold must be a ThresholdStrategy (callable v -> theta); got {type(threshold)}")
        _check_choice(counting, COUNTINGS, "counting")
        if max_spikes is not None and max_spikes < 0:
            raise ValueError(f"max_spikes={max_spikes} must be >= 0 or None (no cap)")
        self.threshold = threshold
        self.max_spikes = max_spikes
        self.phases = phases
        self.counting = counting
        self.stats: SpikeStats | None = None
        self.fan_out: int = 1
        self.first_token = first_token

    def float_tokens(self, v: Tensor) -> int:
        """How many tokens of ``v`` this call passes through in float (the census charges their consumers)."""
        if self.first_token is None or not self.first_token.active or v.dim() < 3 or v.shape[-2] == 0:
            return 0
        return v[..., 0, 0].numel()

    def quantize(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Integer spike counts and threshold ``(q, theta)`` for ``v`` (no statistics, no gradient)."""
        with torch.no_grad():
            theta = self.threshold(v)
            return graded_quantize(v, theta, self.max_spikes), theta

    def _count(self, q: Tensor) -> None:
        counts = None if self.counting == "unary" else spike_count(q, self.counting)
        record_spikes(self.stats, q, self.fan_out, counts)

    def forward(self, v: Tensor) -> Tensor:
        if self.float_tokens(v):  # the attention-sink token stays float; the rest spikes
            return torch.cat([v[..., :1, :], self._encode(v[..., 1:, :])], dim=-2)
        return self._encode(v)

    def _encode(self, v: Tensor) -> Tensor:
        with torch.no_grad():  # the threshold gets no gradient: don't record (or save v for) its graph
            theta = self.threshold(v)
        on_counts = self._count if self.stats is not None else None
        if torch.is_grad_enabled() and v.requires_grad:
            return _StraightThrough.apply(v, theta, self.max_spikes, on_counts)
        with torch.no_grad():
            return _quantize_dequantize(v, theta, self.max_spikes, on_counts)

    def extra_repr(self) -> str:
        phases = f"phases={self.phases}, " if self.phases is not None else ""
        phases += "first_token=float, " if self.first_token is not None else ""
        return f"{phases}max_spikes={self.max_spikes}, counting={self.counting!r}, fan_out={self.fan_out}"

    @property
    def activation_bits(self) -> int | None:
        """Bits of the signed integer a count needs (sign + magnitude bits); None when unbounded."""
        if self.max_spikes is None:
            return None
        return 1 + max(1, int(self.max_spikes).bit_length())
