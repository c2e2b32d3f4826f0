"""Held-out perplexity over packed blocks: the one fidelity measure every command and benchmark shares.

The loss is summed over predicted tokens and divided once by their total count (not a mean of per-batch means,
which weights short batches wrongly).

With a large vocabulary the ``[batch, seq, vocab]`` float32 logits dominate memory (Gemma 3: 262k entries, 1 GB at
4 x 256 tokens, about three times that with the loss and its backward). :func:`model_nll` therefore runs
``lm_head`` and the loss a slice of positions at a time when the logits would exceed :data:`LOGITS_CHUNK_BYTES`,
recomputing each slice in the backward instead of keeping it; the result equals the whole-tensor loss.

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
from torch.utils.checkpoint import checkpoint

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


LOGITS_CHUNK_BYTES = 256 << 20  # float32 logits per slice: 256 positions of one sequence at a 262k vocabulary

# config attributes of models that rescale the logits after lm_head in ways the sliced path does not reproduce
_UNSUPPORTED_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def model_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
              keys: Sequence[str] = ("input_ids", "attention_mask"),
              max_logits_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and target count of one batch; ``keys`` are the batch entries passed to the model (a spiking
    peft model also takes ``doc_start``).

    When the float32 logits of the batch would exceed ``max_logits_bytes`` (None: :data:`LOGITS_CHUNK_BYTES`),
    ``lm_head`` and the loss run in slices of positions (see the module docstring); the values are the same.

    Example:
        >>> from hybridtune.testing import tiny_model
        >>> model, ids = tiny_model("gemma3"), torch.randint(3, 256, (2, 16))
        >>> whole, n = model_nll(model, {"input_ids": ids, "labels": ids})
        >>> sliced, _ = model_nll(model, {"input_ids": ids, "labels": ids}, max_logits_bytes=2 * 256 * 4 * 5)
        >>> int(n), torch.allclose(whole, sliced, atol=1e-5)
        (30, True)
    """
    inputs = {k: batch[k] for k in keys if k in batch}
    max_logits_bytes = LOGITS_CHUNK_BYTES if max_logits_bytes is None else max_logits_bytes
    head, vocab, softcap = _sliceable_head(model)
    ids = inputs.get("input_ids", batch["labels"])
    if head is None or ids.numel() * vocab * 4 <= max_logits_bytes:
        return causal_lm_nll(model(**inputs).logits, batch["labels"])
    step = max(1, max_logits_bytes // (ids.shape[0] * vocab * 4))
    return _sliced_nll(model, head, inputs, batch["labels"], step, softcap)


def _sliceable_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, int, float | None]:
    """``(lm_head, vocab, softcap)`` when the loss can be computed slice by slice from ``lm_head``'s input, else
    ``(None, 0, None)``: no output embedding, a logit transform after it other than Gemma's soft-capping, or a
    sharded (FSDP2 DTensor) head, whose weights exist whole only inside the model's own forward."""
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    weight = getattr(head, "weight", None)
    config = getattr(inner, "config", None)
    if weight is None or weight.dim() != 2 or hasattr(weight, "placements") or any(
            getattr(config, a, None) is not None for a in _UNSUPPORTED_LOGIT_TRANSFORMS):
        return None, 0, None
    return head, int(weight.shape[0]), getattr(config, "final_logit_softcapping", None)


def _slice_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
               softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap  # as Gemma's forward does after lm_head
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="none").view(targets.shape)


def _sliced_nll(model: torch.nn.Module, head: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                labels: torch.Tensor, step: int, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's forward with ``lm_head`` fed an empty slice (its input kept), then ``lm_head`` + loss over
    ``step`` positions at a time. Each slice is recomputed in the backward (activation checkpointing), so at most
    one slice of logits exists at once; ``lm_head``'s hooks (encoders, the census) see every position once."""
    kept: list[torch.Tensor] = []

    def keep_input(module: torch.nn.Module, args: tuple) -> tuple:
        kept.append(args[0])
        return (args[0][:, :0], *args[1:])

    # prepended: the head's own input transforms (online rotations) run later, in the sliced calls, exactly once
    handle = head.register_forward_pre_hook(keep_input, prepend=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    if len(kept) != 1:
        raise RuntimeError(f"lm_head ran {len(kept)} times in one forward; the sliced loss needs exactly one call")
    hidden = kept[0]
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].to(hidden.device)  # target of position t = token t+1
    parts = []
    for start in range(0, shifted.shape[1], step):
        h, t = hidden[:, start:start + step], shifted[:, start:start + step]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_slice_nll, head, h, t, softcap, use_reentrant=False))
        else:
            parts.append(_slice_nll(head, h, t, softcap))
    nll = torch.cat(parts, dim=1)
    return nll[:, :-1], (shifted[:, :-1] != -100).sum()


@torch.no_grad()
def token_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood and the number of predicted tokens of one batch."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    device = next(model.parameters()).device
    moved = {"input_ids": ids.to(device), "labels": batch.get("labels", ids)}
    if mask is not None:
        moved["attention_mask"] = mask.to(device)
    nll, count = model_nll(model, moved)
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
