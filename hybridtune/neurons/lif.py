"""Stateful IF / LIF neurons (soft reset) for the T > 1 rate-coding baseline.

The membrane ``v`` is registered state (:class:`~hybridtune.neurons.stateful.StatefulNeuron`): a non-persistent
buffer that follows ``.to()``, is never saved and is forgotten by ``reset_state()`` / ``reset_state(model)``.

Example:
    >>> import torch
    >>> from hybridtune.neurons import IFNeuron, reset_state
    >>> n = IFNeuron(threshold=1.0)
    >>> [n(torch.tensor([0.6])).item() for _ in range(3)]
    [0.0, 1.0, 0.0]
    >>> reset_state(n)
    1
    >>> n.v is None
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import if_rate_count, lif_sequence, lif_step
from .stateful import StatefulNeuron, reset_state
from .stats import SpikeStats, record_spikes
from .surrogates import get_surrogate
from .thresholds import ThresholdStrategy

__all__ = ["IFNeuron", "LIFNeuron", "RateCodedIF", "reset_state"]

STEP_MODES = ("single", "multi")


class LIFNeuron(StatefulNeuron):
    """Leaky integrate-and-fire with soft reset: ``v = decay * v + x; s = H(v - theta); v -= s * theta``.

    ``step_mode="single"``: one call = one time step, membrane carried in ``self.v`` across calls (reset with
    ``reset_state()``). ``"multi"``: one call = a whole sequence with time on dim 0, starting from ``self.v``.
    ``surrogate`` (a name in ``surrogates``) makes the spike differentiable with that surrogate (snnTorch's
    convention ``v - theta > 0``); None gives a hard threshold firing by the same rule (``functional.fires``).

    Example:
        >>> n = LIFNeuron(threshold=1.0, decay=0.5, step_mode="multi")
        >>> n(torch.tensor([[0.8], [0.8], [0.8]])).squeeze(-1).tolist()
        [0.0, 1.0, 0.0]
    """

    v: Tensor | None

    def __init__(
        self,
        threshold: float = 1.0,
        decay: float = 0.9,
        surrogate: str | None = None,
        slope: float | None = None,
        step_mode: str = "single",
        detach_reset: bool = False,
    ):
        super().__init__()
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode={step_mode!r} is not valid; choose one of {STEP_MODES}")
        if not threshold > 0:
            raise ValueError(f"threshold={threshold} must be > 0")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay} must be in [0, 1]")
        self.threshold, self.decay, self.step_mode, self.detach_reset = float(threshold), float(decay), step_mode, \
            detach_reset
        self.surrogate_name = surrogate
        self._surrogate = None if surrogate is None else get_surrogate(surrogate, slope)
        self.register_state("v")
        self.stats: SpikeStats | None = None
        self.fan_out: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "single":
            v = torch.zeros_like(x) if self.v is None else self.v
            s, self.v = lif_step(v, x, self.threshold, self.decay, None, self._surrogate, self.detach_reset)
        else:
            s, self.v = lif_sequence(x, self.threshold, self.decay, self.v, None, self._surrogate,
                                     self.detach_reset)
        record_spikes(self.stats, s, self.fan_out)
        return s

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold}, decay={self.decay}, surrogate={self.surrogate_name!r}, "
                f"step_mode={self.step_mode!r}")


class IFNeuron(LIFNeuron):
    """Integrate-and-fire (no leak) with soft reset; ``LIFNeuron`` with ``decay=1``.

    Example:
        >>> IFNeuron(step_mode="multi")(torch.full((4, 1), 0.625)).squeeze(-1).tolist()
        [0.0, 1.0, 0.0, 1.0]
    """

    def __init__(self, threshold: float = 1.0, surrogate: str | None = None, slope: float | None = None,
                 step_mode: str = "single", detach_reset: bool = False):
        super().__init__(threshold, 1.0, surrogate, slope, step_mode, detach_reset)


class RateCodedIF(nn.Module):
    """T-step rate-coded IF as a drop-in encoder for one model step: returns ``count * theta / T``.

    Each neuron (a positive and a negative population, sign of ``v``) integrates the constant current ``|v|`` for
    ``num_steps`` steps and fires at most once per step; the count is computed in closed form
    (``functional.if_rate_count``, equal to running ``if_sequence``). ``theta`` comes from a threshold strategy,
    as for ``GradedNeuron``. Statistics: spikes summed over the T steps, one neuron-step per neuron per model
    step (comparable with T = 1 graded neurons); backward is straight-through.

    Example:
        >>> from hybridtune.neurons import StaticThreshold
        >>> RateCodedIF(StaticThreshold(torch.tensor(1.0)), num_steps=4)(torch.tensor([0.3, -0.8])).tolist()
        [0.25, -0.75]
    """

    def __init__(self, threshold: ThresholdStrategy, num_steps: int):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1")
        self.threshold = threshold
        self.num_steps = int(num_steps)
        self.stats: SpikeStats | None = None
        self.fan_out: int = 1

    def forward(self, v: Tensor) -> Tensor:
        with torch.no_grad():
            theta = self.threshold(v)
            n = if_rate_count(v, theta, self.num_steps)
            record_spikes(self.stats, n, self.fan_out)
            y = n.mul_(theta / self.num_steps)
        if torch.is_grad_enabled() and v.requires_grad:
            y = v + (y - v).detach()  # straight-through
        return y

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}"
