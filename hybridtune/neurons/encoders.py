"""First-layer input encoders for T > 1 (time-first ``[T, ...]``): direct current, rate and latency coding.

Rate and latency coding call ``snntorch.spikegen``. At T = 1 the base model uses direct encoding (the analog
value drives the first spiking layer); these exist for the rate-coded baseline.

Example:
    >>> import torch
    >>> encode(torch.tensor([1.0, 0.5, 0.25]), "latency", num_steps=5).argmax(0).tolist()
    [0, 2, 3]
"""

from __future__ import annotations

from typing import Any

import torch
from snntorch import spikegen
from torch import Tensor

ENCODINGS = ("direct", "rate", "latency")


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an int >= 1")


def encode_direct(x: Tensor, num_steps: int = 1) -> Tensor:
    """The analog input repeated over ``num_steps`` (a broadcast view, not a copy): ``[T, *x.shape]``.

    Example:
        >>> encode_direct(torch.tensor([0.5, -1.0]), 2).tolist()
        [[0.5, -1.0], [0.5, -1.0]]
    """
    _check_steps(num_steps)
    return x.unsqueeze(0).expand(num_steps, *x.shape)


def encode_rate(x: Tensor, num_steps: int, gain: float = 1.0, signed: bool = False) -> Tensor:
    """Bernoulli (Poisson-like) spike trains with ``P(spike) = clamp(gain * x, 0, 1)`` via ``spikegen.rate``.

    ``signed=True`` encodes ``|x|`` and restores the sign (a positive and a negative population). Seed with
    ``torch.manual_seed`` for reproducibility.

    Example:
        >>> encode_rate(torch.tensor([0.0, 1.0, -1.0]), 3, signed=True).tolist()
        [[0.0, 1.0, -1.0], [0.0, 1.0, -1.0], [0.0, 1.0, -1.0]]
    """
    _check_steps(num_steps)
    if not signed:
        return spikegen.rate(x, num_steps=num_steps, gain=gain)
    return spikegen.rate(x.abs(), num_steps=num_steps, gain=gain) * torch.sign(x)


def encode_latency(
    x: Tensor, num_steps: int, threshold: float = 0.01, linear: bool = True, normalize: bool = True,
    tau: float = 1.0, clip: bool = False,
) -> Tensor:
    """One spike per input at a time that falls as the input grows, via ``spikegen.latency`` (inputs in [0, 1]).

    With the defaults (linear, normalised) the spike time is ``round((T - 1) * (1 - x))``; inputs below
    ``threshold`` fire at the last step (``clip=True``: not at all).

    Example:
        >>> encode_latency(torch.tensor([1.0, 0.0]), 3).tolist()
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    _check_steps(num_steps)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"encode_latency: inputs must lie in [0, 1]; got range [{lo}, {hi}] (rescale first)")
    if normalize and num_steps < 2:
        raise ValueError("encode_latency: normalize=True needs num_steps >= 2")
    out = spikegen.latency(x, num_steps=num_steps, threshold=threshold, tau=tau, linear=linear,
                           normalize=normalize, clip=clip)
    return out.to(x.dtype)


def encode(x: Tensor, method: str = "direct", num_steps: int = 1, **kwargs: Any) -> Tensor:
    """Dispatch to ``encode_<method>`` for ``method`` in ``ENCODINGS``.

    Example:
        >>> encode(torch.ones(2), "direct", num_steps=3).shape
        torch.Size([3, 2])
    """
    if method == "direct":
        return encode_direct(x, num_steps, **kwargs)
    if method == "rate":
        return encode_rate(x, num_steps, **kwargs)
    if method == "latency":
        return encode_latency(x, num_steps, **kwargs)
    raise ValueError(f"unknown encoding {method!r}; choose one of {', '.join(ENCODINGS)}")
