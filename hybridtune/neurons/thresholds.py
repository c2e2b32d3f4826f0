"""Threshold strategies for graded neurons (static per channel, dynamic per token or per group of channels) and
static-threshold calibration.

Example:
    >>> import torch
    >>> samples = torch.tensor([[1.0, -4.0], [3.0, 4.0]])
    >>> StaticThreshold(calibrate_static_threshold(samples, "mean_abs", divisor=2.0)).theta.tolist()
    [1.0, 2.0]
    >>> DynamicThreshold("mean_abs", divisor=2.0)(samples).squeeze(-1).tolist()
    [1.25, 1.75]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .functional import THRESHOLD_MODES, _check_choice, dynamic_threshold

CALIBRATION_METHODS = ("mean_abs", "rms", "max_abs", "percentile")


@runtime_checkable
class ThresholdStrategy(Protocol):
    """Anything that maps a membrane tensor ``v [..., C]`` to a positive threshold broadcastable against it."""

    def __call__(self, v: Tensor) -> Tensor: ...


class StaticThreshold(nn.Module):
    """Calibrated threshold per channel (``[C]``) or per tensor (scalar), a persistent buffer ``theta``.

    Persistent so it saves and loads with the calibration state; it follows ``.to()`` like any buffer and is
    cast to the input's dtype when used.

    Example:
        >>> StaticThreshold(torch.tensor([0.5, 2.0]))(torch.zeros(3, 2)).tolist()
        [0.5, 2.0]
    """

    theta: Tensor

    def __init__(self, theta: Tensor | float):
        super().__init__()
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype() if not torch.is_tensor(theta) else None)
        _validate_theta(theta)
        self.register_buffer("theta", theta.detach().clone(), persistent=True)

    def forward(self, v: Tensor) -> Tensor:
        if self.theta.ndim == 1 and v.shape[-1] != self.theta.shape[0]:
            raise ValueError(
                f"StaticThreshold has {self.theta.shape[0]} channels but the input's last dim is {v.shape[-1]}"
            )
        return self.theta if self.theta.dtype == v.dtype else self.theta.to(v.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Calibration state may carry a different number of channels than the placeholder built before loading.
        key = prefix + "theta"
        if key in state_dict and state_dict[key].shape != self.theta.shape:
            self.theta = torch.empty_like(state_dict[key], dtype=self.theta.dtype, device=self.theta.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.theta.numel() if self.theta.ndim else 'scalar'}"


class DynamicThreshold(nn.Module):
    """Per-token threshold adaptation: ``theta = stat(v_t) / divisor``, stat ``mean_abs``, ``rms`` or ``max_abs``.

    Example:
        >>> DynamicThreshold("rms", divisor=1.0)(torch.tensor([[3.0, 4.0]])).tolist()
        [[3.535533905029297]]
    """

    def __init__(self, mode: str = "mean_abs", divisor: float = 8.0, eps: float = 1e-12):
        super().__init__()
        _check_choice(mode, THRESHOLD_MODES, "mode")
        if not divisor > 0:
            raise ValueError(f"divisor={divisor} must be > 0")
        self.mode, self.divisor, self.eps = mode, float(divisor), float(eps)

    def forward(self, v: Tensor) -> Tensor:
        return dynamic_threshold(v, self.mode, self.divisor, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, divisor={self.divisor}"


class WrappedThreshold(nn.Module):
    """A threshold strategy built on an ``inner`` one (registered as a submodule); its statistic is the inner's."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def mode(self) -> str:
        return getattr(self.inner, "mode", "mean_abs")

    @property
    def divisor(self) -> float | None:
        return getattr(self.inner, "divisor", None)


class ChannelScaledThreshold(WrappedThreshold):
    """A per-token threshold scaled per channel: ``theta[t, c] = scale_c * inner(v / scale)[t]``.

    Outlier channels (large ``scale_c``) get proportionally coarser steps instead of saturating a bounded count; the
    per-token statistic is taken over ``v / scale`` (a weighted sum: one multiply-accumulate per element, charged).
    ``scale`` folds into the consuming weights (``W diag(scale)``), so the count times the per-token threshold is
    all the synapse needs. ``scale`` is a persistent buffer (saved with the calibration state).

    Example:
        >>> t = ChannelScaledThreshold(DynamicThreshold("mean_abs", divisor=1.0), torch.tensor([1.0, 4.0]))
        >>> t(torch.tensor([[1.0, 8.0]])).tolist()
        [[1.5, 6.0]]
    """

    scale: Tensor

    def __init__(self, inner: nn.Module, scale: Tensor):
        super().__init__(inner)
        if scale.ndim != 1 or not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
            raise ValueError("ChannelScaledThreshold: scale must be a [C] tensor, finite and > 0")
        self.register_buffer("scale", scale.detach().clone(), persistent=True)

    def forward(self, v: Tensor) -> Tensor:
        s = self.scale if self.scale.dtype == v.dtype else self.scale.to(v.dtype)
        return self.inner(v / s) * s

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


class ClipFreeThreshold(WrappedThreshold):
    """A per-token threshold that never saturates a bounded count: ``theta_t = max(inner(v)_t, max|v_t| / cap)``.

    The inner statistic (e.g. ``mean|v_t| / divisor``) sets the resolution of ordinary tokens; a token whose
    largest element would exceed ``cap`` steps (a massive-activation token, an attention sink) gets a coarser step
    instead of a clipped outlier. On the default model at K = 6 phases this moved the perplexity ratio from 1.26x
    (clipped) to about 1.01x; the per-token max costs one comparison per element (charged by the census).

    Example:
        >>> t = ClipFreeThreshold(DynamicThreshold("mean_abs", divisor=2.0), cap=3)
        >>> t(torch.tensor([[1.0, 1.0], [1.0, 9.0]])).squeeze(-1).tolist()
        [0.5, 3.0]
    """

    def __init__(self, inner: nn.Module, cap: int):
        super().__init__(inner)
        if not (isinstance(cap, int) and cap >= 1):
            raise ValueError(f"ClipFreeThreshold: cap={cap!r} must be an integer >= 1 (the count's bound)")
        self.cap = cap

    def forward(self, v: Tensor) -> Tensor:
        return torch.maximum(self.inner(v), self.floor(v))

    def floor(self, v: Tensor) -> Tensor:
        """``max|v_t| / cap``: the smallest threshold that keeps every entry of ``v_t`` within the bound."""
        return v.abs().amax(-1, keepdim=True).div_(self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


class GroupedThreshold(WrappedThreshold):
    """One per-token threshold per group of ``group`` adjacent channels: ``inner`` applied to ``v`` split as
    ``[..., C / group, group]``, broadcast back to ``[..., C]``.

    A finer grid than one threshold per token where channels differ in scale (the MX / per-group convention of
    low-bit quantisation): at K = 4 phases on the default model, groups of 32 (with the sink token float) took the
    best perplexity ratio from 1.37x to 1.09x. The price is in the synapse: each consumer output sums its inputs group by group and
    rescales each partial sum by its group's threshold, ``C / group`` float multiply-accumulates per output per
    token instead of one (charged by the accounting census). ``C`` must be a multiple of ``group``.

    Example:
        >>> t = GroupedThreshold(DynamicThreshold("mean_abs", divisor=1.0), group=2)
        >>> t(torch.tensor([[1.0, 3.0, 10.0, 30.0]])).tolist()
        [[2.0, 2.0, 20.0, 20.0]]
    """

    def __init__(self, inner: nn.Module, group: int):
        super().__init__(inner)
        if not (isinstance(group, int) and not isinstance(group, bool) and group >= 1):
            raise ValueError(f"GroupedThreshold: group={group!r} must be an integer >= 1 (channels per threshold)")
        self.group = group

    def groups(self, channels: int) -> int:
        """How many thresholds a token of ``channels`` channels gets."""
        if channels % self.group:
            raise ValueError(f"GroupedThreshold: {channels} channels are not a multiple of group={self.group} "
                             "(conversion.threshold_group must divide every encoded width)")
        return channels // self.group

    def forward(self, v: Tensor) -> Tensor:
        split = v.reshape(*v.shape[:-1], self.groups(v.shape[-1]), self.group)
        return self.inner(split).expand_as(split).reshape(v.shape)

    def extra_repr(self) -> str:
        return f"group={self.group}"


# strategies whose theta follows each token (a per-token reduction at run time; static ones fold into the weights)
PER_TOKEN_THRESHOLDS = (DynamicThreshold, ChannelScaledThreshold, ClipFreeThreshold, GroupedThreshold)


def _validate_theta(theta: Tensor) -> None:
    if theta.ndim > 1:
        raise ValueError(f"static theta must be a scalar or [C]; got shape {list(theta.shape)}")
    if not theta.is_floating_point():
        raise ValueError(f"static theta must be floating point; got {theta.dtype}")
    if theta.device.type != "meta" and not bool(torch.all(torch.isfinite(theta) & (theta > 0))):
        raise ValueError("static theta must be finite and > 0 in every channel")


def _as_rows(samples: Tensor | Iterable[Tensor]) -> Tensor:
    if isinstance(samples, Tensor):
        parts = [samples]
    else:
        parts = list(samples)
        if not parts:
            raise ValueError("calibrate_static_threshold: samples is empty")
    c = parts[0].shape[-1]
    for p in parts:
        if p.shape[-1] != c:
            raise ValueError(f"calibrate_static_threshold: channel counts differ ({c} vs {p.shape[-1]})")
    return torch.cat([p.detach().reshape(-1, c) for p in parts]).to(torch.float32)


def calibrate_static_threshold(
    samples: Tensor | Iterable[Tensor],
    method: str = "mean_abs",
    divisor: float = 8.0,
    percentile: float = 99.9,
    per_channel: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Static threshold from collected activations ``samples [..., C]`` (a tensor or an iterable of them).

    ``theta = stat(|v|) / divisor`` with ``stat`` one of ``"mean_abs"``, ``"rms"``, ``"max_abs"`` or
    ``"percentile"`` (nearest-rank, ``percentile`` in (0, 100]), per channel (``[C]``) or per tensor (scalar).
    Floored at ``eps`` so silent channels get a valid threshold. Deterministic; float32 result.

    Example:
        >>> calibrate_static_threshold(torch.tensor([[1.0, 0.0], [-3.0, 0.0]]), "max_abs", divisor=3.0).tolist()
        [1.0, 9.99999993922529e-09]
    """
    _check_choice(method, CALIBRATION_METHODS, "method")
    if not divisor > 0:
        raise ValueError(f"divisor={divisor} must be > 0")
    a = _as_rows(samples).abs()
    if not per_channel:
        a = a.reshape(-1, 1)
    if method == "mean_abs":
        stat = a.mean(0)
    elif method == "rms":
        stat = a.square().mean(0).sqrt()
    elif method == "max_abs":
        stat = a.amax(0)
    else:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile={percentile} must be in (0, 100]")
        k = max(1, math.ceil(percentile / 100 * a.shape[0]))
        stat = a.kthvalue(k, dim=0).values  # no size limit, unlike torch.quantile
    theta = (stat / divisor).clamp_(min=eps)
    return theta if per_channel else theta.reshape(())


class ChannelCalibrator:
    """Streaming per-channel statistics of activations, for static thresholds without keeping every sample.

    ``update(v, mask)`` accumulates ``sum|v|``, ``sum v^2``, ``max|v|`` and the count over ``v [..., C]``
    (``mask`` True = keep, broadcastable to ``v.shape[:-1]``); ``threshold(method, divisor)`` gives the same
    result as ``calibrate_static_threshold`` on the concatenated samples for ``"mean_abs"``, ``"rms"`` and
    ``"max_abs"``. Percentiles need the samples: pass ``keep_samples=True`` (memory grows with the tokens).

    Example:
        >>> cal = ChannelCalibrator()
        >>> cal.update(torch.tensor([[1.0, -4.0]])); cal.update(torch.tensor([[3.0, 4.0]]))
        >>> cal.threshold("mean_abs", divisor=2.0).tolist(), cal.count
        ([1.0, 2.0], 2)
    """

    def __init__(self, keep_samples: bool = False):
        self.keep_samples = keep_samples
        self.count = 0
        self.sum_abs: Tensor | None = None
        self.sum_sq: Tensor | None = None
        self.max_abs: Tensor | None = None
        self.samples: list[Tensor] = []

    @torch.no_grad()
    def update(self, v: Tensor, mask: Tensor | None = None) -> None:
        rows = v.detach().reshape(-1, v.shape[-1]).to(torch.float64)
        if mask is not None:
            rows = rows[mask.expand(v.shape[:-1]).reshape(-1).to(torch.bool)]
        if self.sum_abs is not None and rows.shape[1] != self.sum_abs.shape[0]:
            raise ValueError(f"ChannelCalibrator: expected {self.sum_abs.shape[0]} channels, got {rows.shape[1]}")
        a = rows.abs()
        if self.sum_abs is None:
            self.sum_abs, self.sum_sq = a.sum(0), a.square().sum(0)
            self.max_abs = a.amax(0) if len(a) else torch.zeros_like(self.sum_abs)
        else:
            self.sum_abs += a.sum(0)
            self.sum_sq += a.square().sum(0)
            if len(a):
                torch.maximum(self.max_abs, a.amax(0), out=self.max_abs)
        self.count += rows.shape[0]
        if self.keep_samples:
            self.samples.append(rows.to(torch.float32).cpu())

    def threshold(self, method: str = "mean_abs", divisor: float = 8.0, percentile: float = 99.9,
                  eps: float = 1e-8) -> Tensor:
        """Per-channel float32 threshold ``[C]`` (see ``calibrate_static_threshold``)."""
        _check_choice(method, CALIBRATION_METHODS, "method")
        if self.count == 0 or self.sum_abs is None:
            raise ValueError("ChannelCalibrator: no activations seen (call update() first)")
        if method == "percentile":
            if not self.keep_samples:
                raise ValueError("ChannelCalibrator: method='percentile' needs keep_samples=True")
            return calibrate_static_threshold(self.samples, "percentile", divisor, percentile, eps=eps)
        if not divisor > 0:
            raise ValueError(f"divisor={divisor} must be > 0")
        stat = {"mean_abs": lambda: self.sum_abs / self.count, "rms": lambda: (self.sum_sq / self.count).sqrt(),
                "max_abs": lambda: self.max_abs}[method]()
        return (stat / divisor).clamp_(min=eps).to(torch.float32)
