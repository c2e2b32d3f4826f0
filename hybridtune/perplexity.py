"""Held-out perplexity over packed blocks: the one fidelity measure every command and benchmark shares.

The loss is summed over predicted tokens and divided once by their total count (not a mean of per-batch means,
which weights short batches wrongly).

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model
    >>> ids = torch.randint(3, 256, (2, 16))
    >>> out = perplexity(tiny_model("llama"), {"input_ids": ids, "labels": ids})
    >>> out["tokens"]
    30
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

BatchContext = Callable[[Mapping[str, torch.Tensor]], AbstractContextManager]


def _batches(blocks: Mapping[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    n = blocks["input_ids"].shape[0]
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in blocks.items() if isinstance(v, torch.Tensor)}


def causal_lm_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token NLL ``[B, L-1]`` (0 where the target is -100, computed in float32) and the number of
    targets: the one definition of the loss that training, evaluation and the learners' rewards share.

    The labels are shifted, not the logits (as transformers' own loss does): slicing ``[B, L, vocab]`` logits would
    copy them, which for a 50k vocabulary costs more than the loss itself.

    Example:
        >>> nll, count = causal_lm_nll(torch.zeros(1, 3, 4), torch.tensor([[0, 1, -100]]))  # uniform over 4 tokens
        >>> round(float(nll.sum()), 4), int(count)                                           # one target: log(4)
        (1.3863, 1)
    """
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)  # target of position t = token t+1
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100,
                          reduction="none").view(shifted.shape)
    targets = shifted[:, :-1]
    return nll[:, :-1], (targets != -100).sum()


def model_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
              keys: Sequence[str] = ("input_ids", "attention_mask")) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and target count of one batch; ``keys`` are the batch entries passed to the model (a spiking
    peft model also takes ``doc_start``)."""
    out = model(**{k: batch[k] for k in keys if k in batch})
    return causal_lm_nll(out.logits, batch["labels"])


@torch.no_grad()
def token_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens of one batch."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=None if mask is None else mask.to(device)).logits
    nll, count = causal_lm_nll(logits, batch.get("labels", ids))
    return float(nll.sum()), int(count)


def perplexity(model: torch.nn.Module, blocks: Mapping[str, torch.Tensor], batch_size: int = 4,
               batch_context: BatchContext | None = None) -> dict[str, float | int]:
    """Perplexity of ``model`` over ``blocks`` (``input_ids`` [N, L], optional ``labels`` / ``attention_mask``).

    ``batch_context(batch)`` may return a context manager entered around each forward (e.g. one that hands the
    document-boundary mask to stateful adapters).
    """
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for batch in _batches(blocks, batch_size):
            with batch_context(batch) if batch_context else nullcontext():
                nll, count = token_nll(model, batch)
            total_nll += nll
            total_tokens += count
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no tokens to evaluate: every label is padding (-100) or the blocks are empty")
    mean = total_nll / total_tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens}
