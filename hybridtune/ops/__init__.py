"""The fused spiking-LoRA op ``hybridtune::spike_lora`` and its backend selection.

``spike_lora(x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state, max_spikes,
surrogate, slope) -> (out, spikes, state_out)``; neurons ``heaviside | mt | lif``; surrogate backward for ``x``,
``lora_A``, ``lora_B``, ``threshold``, ``decay`` (and ``weight`` / ``bias`` / ``state`` if they require grad).
Numerics in :mod:`hybridtune.ops.reference`; backends in :mod:`hybridtune.ops.backend`.

Example:
    >>> import torch
    >>> from hybridtune.ops import spike_lora, backend_info
    >>> out, s, _ = spike_lora(torch.ones(1, 2, 3), torch.zeros(2, 3), None, torch.ones(1, 3), torch.ones(2, 1), 1.0,
    ...                        "heaviside", torch.tensor([2.5]), torch.zeros(1), None, None, 0, "atan", 2.0)
    >>> out[0, :, 0].tolist(), s.flatten().tolist()
    ([1.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

from .backend import (
    BACKENDS,
    ENV_VAR,
    activate,
    active_backend,
    backend_info,
    is_resolved,
    requested_backend,
    set_backend,
)
from .reference import NEURONS, bottleneck_backward, bottleneck_forward, spike_lora_backward, spike_lora_forward
from .scan import lif_scan, linear_scan, reverse_linear_scan
from .spike_lora import spike_lora

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "NEURONS",
    "activate",
    "active_backend",
    "backend_info",
    "bottleneck_backward",
    "bottleneck_forward",
    "is_resolved",
    "lif_scan",
    "linear_scan",
    "requested_backend",
    "reverse_linear_scan",
    "set_backend",
    "spike_lora",
    "spike_lora_backward",
    "spike_lora_forward",
]
