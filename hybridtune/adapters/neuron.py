"""``BottleneckNeuron``: the per-adapter parameters and state of the neuron between ``lora_A`` and ``lora_B``.

It holds no forward of its own: the layer passes ``threshold()`` / ``decay()`` to the ``spike_lora`` op. Learnable
values are reparameterised so optimisers cannot push them out of range: ``threshold = exp(log_threshold)`` (> 0) and
``decay = sigmoid(decay_logit)`` (in (0, 1)). Fixed values are persistent buffers (they save with the adapter). The
LIF membrane carried between calls (generation) and the one the current call started from (replayed when gradient
checkpointing re-runs the forward) are registered state (``hybridtune.neurons.StatefulNeuron``): they follow
``.to()``, are never saved, and are cleared by ``reset_state()`` (``hybridtune.neurons.reset_state(model)``).

Example:
    >>> from hybridtune.adapters.config import LIFStrategy
    >>> n = BottleneckNeuron(4, LIFStrategy(threshold=0.5, decay=0.8))
    >>> round(n.threshold()[0].item(), 4), round(n.decay()[0].item(), 4)
    (0.5, 0.8)
    >>> sorted(k for k, _ in n.named_parameters())
    ['decay_logit', 'log_threshold']
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hybridtune.neurons import StatefulNeuron

from .config import NeuronStrategy

# a learnable decay of exactly 1 has an infinite logit: start just below it
_MAX_LEARNED_DECAY = 1.0 - 1e-4


class BottleneckNeuron(StatefulNeuron):
    """Threshold [r] and (LIF) decay [r] of one adapter, plus the carried LIF membrane ``state`` [B, r] or None."""

    state: Tensor | None

    def __init__(self, rank: int, strategy: NeuronStrategy):
        super().__init__()
        self.strategy = strategy
        self.rank = rank
        theta = torch.full((rank,), float(strategy.threshold))
        if strategy.learn_threshold:
            self.log_threshold = nn.Parameter(theta.log())
        else:
            self.register_buffer("fixed_threshold", theta)
        decay = float(getattr(strategy, "decay", 0.0))
        if strategy.stateful and getattr(strategy, "learn_decay", False):
            d = min(decay, _MAX_LEARNED_DECAY)
            self.decay_logit = nn.Parameter(torch.full((rank,), math.log(d / (1 - d))))
        else:
            self.register_buffer("fixed_decay", torch.full((rank,), decay))
        self.register_state("state")
        # spike statistics while hybridtune.accounting counts (None otherwise); each spike drives one column of
        # lora_B, so the layer sets fan_out to its out_features
        self.stats = None
        self.fan_out = 1
        # membrane at the start of the current model call, reused if gradient checkpointing recomputes the forward
        self.register_state("_call_state_in")

    @property
    def kind(self) -> str:
        return self.strategy.kind

    def threshold(self) -> Tensor:
        return self.log_threshold.exp() if hasattr(self, "log_threshold") else self.fixed_threshold

    def decay(self) -> Tensor:
        return torch.sigmoid(self.decay_logit) if hasattr(self, "decay_logit") else self.fixed_decay

    @torch.no_grad()
    def set_threshold(self, value: Tensor | float) -> None:
        """Overwrite the threshold (e.g. from a learner or calibration); values must be > 0."""
        theta = torch.as_tensor(value, dtype=torch.float32).expand(self.rank).clone()
        if not bool((theta > 0).all()):
            raise ValueError("threshold values must be > 0")
        if hasattr(self, "log_threshold"):
            self.log_threshold.copy_(theta.log())
        else:
            self.fixed_threshold.copy_(theta)

    def extra_repr(self) -> str:
        s = self.strategy
        extra = f", decay={getattr(s, 'decay', None)}" if s.stateful else ""
        cap = f", max_spikes={s.op_max_spikes}" if s.kind == "mt" else ""
        return f"kind={s.kind}, rank={self.rank}, surrogate={s.surrogate}(slope={s.slope}){extra}{cap}"
