"""Reward baselines for three-factor learners: EMA, per-target-token EMA, group mean over samples of one prompt.

A baseline gives ``b`` (broadcastable to the rewards) for the current micro-batch *from earlier batches only* (EMA
kinds) or from the other samples of the same prompt (``group``), so the advantage ``R − b`` stays an unbiased
learning signal. EMA baselines change only in :meth:`update`, which the learner calls once per optimizer step with
statistics averaged across ranks: every rank holds the same baseline, and it is checkpointed as tensors.

* ``ema`` — ``b ← m b + (1 − m) mean(R)`` over all rewards (per-token or per-sequence).
* ``token_ema`` — dense rewards only: one EMA per *target token id* (the token being predicted), a stimulus-specific
  baseline that removes most of the variance of per-token log-likelihoods; unseen ids fall back to the global EMA.
* ``group`` — the mean reward of the other samples with the same ``batch["group"]`` id (leave-one-out by
  default); dense rewards are averaged per position.
* ``none`` — ``b = 0``.

Example:
    >>> import torch
    >>> from hybridtune.learners.rewards import RewardSignal
    >>> b = make_baseline("ema", momentum=0.5)
    >>> sig = RewardSignal(torch.tensor([1.0, 3.0]))
    >>> b.value(sig, {}).item()              # nothing seen yet: the batch's own mean
    2.0
    >>> b.update(b.stats(sig, {})); b.update(b.stats(RewardSignal(torch.tensor([4.0])), {})); b.value(sig, {}).item()
    3.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .plasticity import group_mean_baseline
from .rewards import RewardSignal

__all__ = ["EMABaseline", "TokenEMABaseline", "GroupBaseline", "NoBaseline", "make_baseline", "group_mean_dense",
           "BASELINES"]

BASELINES = ("ema", "token_ema", "group", "none")


def _masked(signal: RewardSignal) -> tuple[Tensor, Tensor]:
    values = signal.values.float()
    mask = signal.mask.to(values.device).float() if signal.mask is not None else torch.ones_like(values)
    return values * mask, mask


def group_mean_dense(values: Tensor, groups: Tensor, mask: Tensor | None = None,
                     leave_one_out: bool = True) -> Tensor:
    """Per-position mean of ``values [B, L]`` over rows with the same ``groups [B]`` id (masked entries excluded).

    With ``leave_one_out`` a row's own value is left out; a position no other row of the group covers gets the
    row's own value (advantage 0).

    Example:
        >>> group_mean_dense(torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 5.0]]), torch.tensor([0, 0, 1])).tolist()
        [[3.0, 6.0], [1.0, 2.0], [5.0, 5.0]]
    """
    if values.dim() != 2 or groups.shape != values.shape[:1]:
        raise ValueError(f"values must be [B, L] and groups [B] (got {tuple(values.shape)}, {tuple(groups.shape)})")
    v = values.float()
    m = mask.to(v.device).float() if mask is not None else torch.ones_like(v)
    _, inverse = torch.unique(groups.to(v.device), return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(n, v.shape[1], dtype=v.dtype, device=v.device).index_add_(0, inverse, v * m)
    counts = torch.zeros(n, v.shape[1], dtype=v.dtype, device=v.device).index_add_(0, inverse, m)
    if leave_one_out:
        others = counts[inverse] - m
        return torch.where(others > 0, (sums[inverse] - v * m) / others.clamp_min(1.0), v)
    return torch.where(counts[inverse] > 0, sums[inverse] / counts[inverse].clamp_min(1.0), v)


class NoBaseline:
    name = "none"

    def setup(self, model: Any) -> None: ...

    def value(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> Tensor:
        return torch.zeros((), device=signal.values.device)

    def stats(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {}

    def update(self, stats: Mapping[str, Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class EMABaseline(NoBaseline):
    """``b ← m b + (1 − m) mean(R)`` (see the module docstring)."""

    name = "ema"

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"baseline_momentum must be in [0, 1) (got {momentum})")
        self.momentum = float(momentum)
        self.mean: Tensor | None = None

    def value(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> Tensor:
        if self.mean is None:  # first batch: its own mean (the only estimate there is)
            values, mask = _masked(signal)
            return (values.sum() / mask.sum().clamp_min(1.0)).detach()
        return self.mean.to(signal.values.device)

    def stats(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        values, mask = _masked(signal)
        return {"sum": values.sum().double(), "count": mask.sum().double()}

    def update(self, stats: Mapping[str, Tensor]) -> None:
        if "sum" not in stats or float(stats["count"]) <= 0:
            return
        mean = (stats["sum"] / stats["count"]).float().cpu()
        self.mean = mean if self.mean is None else self.momentum * self.mean + (1.0 - self.momentum) * mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": None if self.mean is None else self.mean.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean = None if state.get("mean") is None else state["mean"].clone()


class TokenEMABaseline(EMABaseline):
    """One EMA per target token id (dense rewards only), falling back to the global EMA for unseen ids."""

    name = "token_ema"

    def __init__(self, momentum: float = 0.9, vocab_size: int | None = None):
        super().__init__(momentum)
        self.vocab_size = vocab_size
        self.token_mean: Tensor | None = None
        self.seen: Tensor | None = None

    def setup(self, model: Any) -> None:
        if self.vocab_size is None:
            config = getattr(model, "config", None)
            self.vocab_size = getattr(config, "vocab_size", None)
        if not self.vocab_size:
            raise ValueError("baseline token_ema needs the vocabulary size (the model's config has no vocab_size)")

    @staticmethod
    def _targets(signal: RewardSignal, batch: Mapping[str, Tensor]) -> Tensor:
        if not signal.dense:
            raise ValueError("baseline token_ema applies to dense (per-token) rewards; use ema or group")
        ids = batch["input_ids"].to(signal.values.device)
        return torch.nn.functional.pad(ids[:, 1:], (0, 1))  # the token predicted at each position

    def value(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> Tensor:
        base = super().value(signal, batch)
        if self.token_mean is None:
            return base
        targets = self._targets(signal, batch).clamp(0, self.vocab_size - 1)
        means, seen = self.token_mean.to(signal.values.device), self.seen.to(signal.values.device)
        return torch.where(seen[targets], means[targets], base.expand_as(targets).float())

    def stats(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().stats(signal, batch)
        values, mask = _masked(signal)
        targets = self._targets(signal, batch).clamp(0, self.vocab_size - 1).reshape(-1)
        sums = torch.zeros(self.vocab_size, dtype=torch.float64, device=values.device)
        counts = torch.zeros_like(sums)
        sums.index_add_(0, targets, values.reshape(-1).double())
        counts.index_add_(0, targets, mask.reshape(-1).double())
        return {**out, "token_sum": sums, "token_count": counts}

    def update(self, stats: Mapping[str, Tensor]) -> None:
        super().update(stats)
        if "token_sum" not in stats:
            return
        counts = stats["token_count"].cpu()
        means = (stats["token_sum"].cpu() / counts.clamp_min(1e-12)).float()
        hit = counts > 0
        if self.token_mean is None:
            self.token_mean = torch.zeros(self.vocab_size)
            self.seen = torch.zeros(self.vocab_size, dtype=torch.bool)
        blended = self.momentum * self.token_mean + (1.0 - self.momentum) * means
        self.token_mean = torch.where(hit & self.seen, blended, torch.where(hit, means, self.token_mean))
        self.seen = self.seen | hit

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(token_mean=None if self.token_mean is None else self.token_mean.clone(),
                   seen=None if self.seen is None else self.seen.clone())
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.token_mean = None if state.get("token_mean") is None else state["token_mean"].clone()
        self.seen = None if state.get("seen") is None else state["seen"].clone()


class GroupBaseline(NoBaseline):
    """Mean reward of the samples of the same prompt (``batch["group"]``), leave-one-out by default; stateless."""

    name = "group"

    def __init__(self, leave_one_out: bool = True):
        self.leave_one_out = bool(leave_one_out)

    def value(self, signal: RewardSignal, batch: Mapping[str, Tensor]) -> Tensor:
        if "group" not in batch:
            raise KeyError("baseline 'group' needs batch['group'] (one prompt id per sequence, e.g. from "
                           "hybridtune.learners.rollout.rollout_batch); use baseline: ema otherwise")
        groups = batch["group"].to(signal.values.device).reshape(-1)
        if signal.dense:
            return group_mean_dense(signal.values, groups, signal.mask, self.leave_one_out)
        return group_mean_baseline(signal.values.float(), groups, leave_one_out=self.leave_one_out)


def make_baseline(kind: str = "ema", momentum: float = 0.9, leave_one_out: bool = True,
                  vocab_size: int | None = None):
    """``ema`` | ``token_ema`` | ``group`` | ``none`` (see the module docstring)."""
    if kind == "ema":
        return EMABaseline(momentum)
    if kind == "token_ema":
        return TokenEMABaseline(momentum, vocab_size)
    if kind == "group":
        return GroupBaseline(leave_one_out)
    if kind == "none":
        return NoBaseline()
    raise ValueError(f"baseline: {kind!r} is not one of {', '.join(BASELINES)}")
