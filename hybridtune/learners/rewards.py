"""Pluggable rewards for three-factor learners: per-token LM log-likelihood (default), per-sequence scalars, callables.

A reward maps the :class:`~hybridtune.learners.protocol.Observation` of one micro-batch to a :class:`RewardSignal`:

* **dense** — ``values [B, L]`` aligned with token positions: ``values[:, t]`` rewards what the network did at
  position t (the prediction of token t+1 is made there), ``mask [B, L]`` says where a reward exists. The default,
  :class:`TokenLogLikelihood`, is ``log p(token[t+1] | tokens[<=t]) = −token_nll[:, t]`` from the forward the
  trainer already ran (``Observation.token_nll``), with no reward at the last position or where labels are -100;
* **per sequence** — ``values [B]``, one scalar per sequence arriving after its last token.

Built-ins by name (:func:`make_reward`): ``loglik`` (dense), ``sequence_loglik`` (mean log-likelihood per
sequence), ``batch:<key>`` (scalars or per-token values the data provides in ``batch[key]``), ``text:<module:fn>``
(``fn(list[str]) -> list[float]`` on the decoded sequences, e.g. generated completions; needs a tokenizer) and
``<module:fn>`` (any callable ``fn(observation)`` returning a tensor ``[B]`` / ``[B, L]`` or a :class:`RewardSignal`).

Example:
    >>> import torch
    >>> from hybridtune.learners.protocol import Observation
    >>> batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6, 7]])}
    >>> sig = make_reward("loglik")(Observation(batch=batch, token_nll=torch.tensor([[0.5, 1.0]])))
    >>> sig.values.tolist(), sig.mask.tolist()
    ([[-0.5, -1.0, 0.0]], [[True, True, False]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridtune.lazy import import_object
from hybridtune.perplexity import causal_lm_nll

from .protocol import Observation

__all__ = [
    "RewardSignal", "Reward", "TokenLogLikelihood", "SequenceLogLikelihood", "BatchReward", "CallableReward",
    "TextReward", "make_reward", "token_nll",
]


@dataclass
class RewardSignal:
    """Rewards of one micro-batch: ``values [B]`` (per sequence) or ``[B, L]`` with ``mask [B, L]`` (dense)."""

    values: Tensor
    mask: Tensor | None = None

    @property
    def dense(self) -> bool:
        return self.values.dim() == 2


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, obs: Observation) -> RewardSignal: ...


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token next-token NLL ``[B, L-1]`` (0 where the label is -100): what ``Observation.token_nll`` holds.

    Example:
        >>> token_nll(torch.zeros(1, 3, 4), torch.tensor([[0, 1, -100]])).tolist()[0][0] > 1.38
        True
    """
    return causal_lm_nll(logits, labels)[0]


def _target_mask(obs: Observation) -> Tensor:
    """``[B, L-1]``: True where position t predicts a real label (labels[:, t+1] != -100)."""
    batch = obs.batch
    labels = batch.get("labels")
    if labels is None:
        ids = batch["input_ids"]
        attn = batch.get("attention_mask")
        keep = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.bool()
        return keep[:, 1:]
    return labels[:, 1:] != -100


class TokenLogLikelihood:
    """Dense reward ``r[b, t] = log p(x[t+1] | x[<=t]) = −token_nll[b, t]`` (the default)."""

    name = "loglik"

    def __call__(self, obs: Observation) -> RewardSignal:
        nll = obs.token_nll.detach().float()
        mask = _target_mask(obs).to(nll.device)
        if mask.shape != nll.shape:
            raise ValueError(f"token_nll has shape {tuple(nll.shape)} but the batch predicts {tuple(mask.shape)}")
        values = F.pad(-nll * mask, (0, 1))  # the last position predicts nothing
        return RewardSignal(values, F.pad(mask, (0, 1), value=False))


class SequenceLogLikelihood:
    """Per-sequence reward: the mean log-likelihood of the sequence's predicted tokens."""

    name = "sequence_loglik"

    def __call__(self, obs: Observation) -> RewardSignal:
        nll = obs.token_nll.detach().float()
        mask = _target_mask(obs).to(nll.device).float()
        return RewardSignal(-(nll * mask).sum(-1) / mask.sum(-1).clamp_min(1.0))


class BatchReward:
    """Rewards the data provides: ``batch[key]`` as ``[B]`` (per sequence) or ``[B, L]`` (dense, mask = attention)."""

    def __init__(self, key: str):
        self.key, self.name = key, f"batch:{key}"

    def __call__(self, obs: Observation) -> RewardSignal:
        if self.key not in obs.batch:
            raise KeyError(f"reward {self.name!r}: the batch has no {self.key!r} entry (it has: "
                           f"{', '.join(sorted(obs.batch))}); add it to the data or choose another reward")
        values = obs.batch[self.key].float()
        if values.dim() == 2:
            attn = obs.batch.get("attention_mask")
            return RewardSignal(values, attn.bool() if attn is not None else torch.ones_like(values, dtype=torch.bool))
        return RewardSignal(values.reshape(-1))


def _as_signal(value: Any, batch_size: int, device: torch.device, name: str) -> RewardSignal:
    if isinstance(value, RewardSignal):
        return value
    values = torch.as_tensor(value, dtype=torch.float32, device=device)
    if values.dim() == 2:
        return RewardSignal(values, torch.ones_like(values, dtype=torch.bool))
    values = values.reshape(-1)
    if values.numel() != batch_size:
        raise ValueError(f"reward {name!r} returned {values.numel()} values for a batch of {batch_size} sequences")
    return RewardSignal(values)


class CallableReward:
    """Any callable ``fn(observation)`` returning a tensor ``[B]`` / ``[B, L]``, a list of floats or a RewardSignal."""

    def __init__(self, fn: Callable[[Observation], Any], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, obs: Observation) -> RewardSignal:
        ids = obs.batch["input_ids"]
        return _as_signal(self.fn(obs), ids.shape[0], ids.device, self.name)


class TextReward:
    """``fn(texts: list[str]) -> list[float]`` on each sequence's decoded text (per-sequence rewards).

    ``completion_only`` decodes only the tokens with a label (for rollouts, whose prompts carry label -100).
    """

    def __init__(self, fn: Callable[[list[str]], Sequence[float]], tokenizer: Any, completion_only: bool = True,
                 name: str | None = None):
        if tokenizer is None:
            raise ValueError("a text reward needs a tokenizer (rstdp option tokenizer: <name or path>)")
        self.fn, self.tokenizer, self.completion_only = fn, tokenizer, completion_only
        self.name = name or f"text:{getattr(fn, '__name__', type(fn).__name__)}"

    def texts(self, batch: dict[str, Tensor]) -> list[str]:
        ids = batch["input_ids"]
        keep = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        if self.completion_only and "labels" in batch:
            keep = keep & (batch["labels"] != -100)
        return [self.tokenizer.decode(row[k].tolist(), skip_special_tokens=True) for row, k in zip(ids.cpu(),
                                                                                                   keep.cpu())]

    def __call__(self, obs: Observation) -> RewardSignal:
        ids = obs.batch["input_ids"]
        scores = self.fn(self.texts(obs.batch))
        return _as_signal([float(s) for s in scores], ids.shape[0], ids.device, self.name)


def _import(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"reward reference {ref!r} must look like 'package.module:function'")
    try:
        return import_object(ref)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"reward {ref!r} cannot be imported: {exc}") from None


def _tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str):
        from hybridtune.models import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def make_reward(spec: Any = None, tokenizer: Any = None) -> Reward:
    """A reward from a name (see the module docstring), a :class:`Reward`, or any callable on the observation.

    Example:
        >>> make_reward("batch:score").name, make_reward(None).name
        ('batch:score', 'loglik')
    """
    if spec is None or spec == "loglik":
        return TokenLogLikelihood()
    if spec == "sequence_loglik":
        return SequenceLogLikelihood()
    if isinstance(spec, str):
        if spec.startswith("batch:"):
            return BatchReward(spec[len("batch:"):])
        if spec.startswith("text:"):
            return TextReward(_import(spec[len("text:"):]), _tokenizer(tokenizer), name=spec)
        if ":" in spec:
            obj = _import(spec)
            obj = obj() if isinstance(obj, type) else obj
            return obj if isinstance(obj, Reward) else CallableReward(obj, name=spec)
        raise ValueError(f"unknown reward {spec!r}; use loglik, sequence_loglik, batch:<key>, text:<module:fn> or "
                         f"<module:fn>")
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return CallableReward(spec)
    raise TypeError(f"reward must be a name or a callable, got {type(spec).__name__}")
