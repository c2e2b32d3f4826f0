"""Held-out perplexity sharded over data-parallel ranks, and the batch contexts of the loop.

The training loss and the evaluation share one definition (:func:`hybridtune.perplexity.causal_lm_nll`):
next-token negative log-likelihood summed over the predicted tokens (labels != -100 after the shift) and divided
once by the global count.

Example:
    >>> import torch
    >>> from hybridtune.perplexity import causal_lm_nll
    >>> logits = torch.zeros(1, 3, 4)                      # uniform over 4 tokens
    >>> nll, count = causal_lm_nll(logits, torch.tensor([[0, 1, -100]]))
    >>> round(float(nll.sum()), 4), int(count)             # one target: log(4)
    (1.3863, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch

from ..accounting import count_spikes
from ..perplexity import model_nll

BatchContext = Callable[[Mapping[str, torch.Tensor]], AbstractContextManager]


def count_targets(labels: torch.Tensor) -> int:
    """How many tokens of a ``labels`` batch are predicted (what the loss is normalised by)."""
    return int((labels[:, 1:] != -100).sum())


def combine_contexts(*factories: BatchContext | None) -> BatchContext:
    """One batch-context factory that enters each of ``factories`` (None entries skipped) in order."""
    active = [f for f in factories if f is not None]

    def enter(batch: Mapping[str, torch.Tensor]) -> AbstractContextManager:
        if not active:
            return nullcontext()
        stack = ExitStack()
        for f in active:
            stack.enter_context(f(batch))
        return stack

    return enter


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 4,
                        accelerator: Any = None, batch_context: BatchContext | None = None,
                        keys: Sequence[str] = ("input_ids", "attention_mask"), lockstep: bool = False
                        ) -> dict[str, float]:
    """Perplexity over ``tensors`` (``input_ids`` [N, L], ``labels``, ...), blocks split round-robin over ranks.

    ``lockstep``: every rank runs the same number of forwards (a sharded model gathers each block's weights from all
    ranks); a rank with fewer blocks repeats its first one for the missing batches, uncounted (its loss and spikes
    are dropped). Returns ``{"ppl", "nll", "tokens"}`` with the global totals (identical on every rank).
    """
    world = getattr(accelerator, "num_processes", 1) if accelerator is not None else 1
    rank = getattr(accelerator, "process_index", 0) if accelerator is not None else 0
    n = tensors["input_ids"].shape[0]
    mine = torch.arange(rank, n, world)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    try:
        for start in range(0, len(mine), batch_size):
            idx = mine[start:start + batch_size]
            batch = {k: v[idx] for k, v in tensors.items()}
            with batch_context(batch) if batch_context else nullcontext():
                nll, count = model_nll(model, batch, keys)
            total += torch.stack([nll.double().sum().cpu(), count.double().cpu()])
        if lockstep and world > 1:
            busiest = math.ceil(math.ceil(n / world) / batch_size)  # rank 0's number of batches
            padding = {k: v[:1] for k, v in tensors.items()}
            for _ in range(busiest - math.ceil(len(mine) / batch_size)):
                with count_spikes(model), batch_context(padding) if batch_context else nullcontext():
                    model_nll(model, padding, keys)
    finally:
        model.train(was_training)
    if world > 1:
        total = accelerator.reduce(total.to(accelerator.device), reduction="sum").cpu()
    nll_sum, tokens = float(total[0]), int(total[1])
    if tokens == 0:
        raise ValueError("no tokens to evaluate: the evaluation blocks are empty or all padding")
    mean = nll_sum / tokens
    return {"ppl": math.exp(mean) if mean < 700 else float("inf"), "nll": mean, "tokens": tokens}


__all__ = ["count_targets", "combine_contexts", "evaluate_perplexity", "BatchContext"]
