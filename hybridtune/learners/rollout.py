"""RL-style use of a three-factor learner outside the trainer: sample completions, score them, learn from them.

:func:`rollout_batch` generates ``num_samples`` completions per prompt (no recording, no noise) and returns a
teacher-forcing batch — ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompts and padding), ``doc_start``
and ``group`` (the prompt's index, for the ``group`` baseline). :func:`observe_batch` runs one forward of that batch
inside the learner's ``recording`` and hands it to ``observe``; with ``escape: true`` the bottleneck spikes of that
forward are the policy's samples. A text reward (``reward: text:<module:fn>``) scores the decoded completions.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_tokenizer
    >>> from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    >>> pm = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(r=4, target_modules=["q_proj"]))
    >>> _ = torch.manual_seed(0)
    >>> batch = rollout_batch(pm, tiny_tokenizer(), ["def f(", "x ="], num_samples=2, max_new_tokens=4)
    >>> batch["group"].tolist(), batch["input_ids"].shape[0]
    ([0, 0, 1, 1], 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .protocol import Observation
from .rewards import token_nll

__all__ = ["rollout_batch", "observe_batch"]


@torch.no_grad()
def rollout_batch(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, num_samples: int = 4,
                  max_new_tokens: int = 32, do_sample: bool = True, temperature: float = 1.0,
                  **generate_kwargs: Any) -> dict[str, Tensor]:
    """Generate ``num_samples`` completions per prompt; return them as a batch to observe (see the module docstring)."""
    if num_samples < 1 or not prompts:
        raise ValueError("rollout_batch needs at least one prompt and num_samples >= 1")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(num_samples)]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):  # left padding: generation continues right after every prompt
        ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
        mask[i, width - len(e):] = 1
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=do_sample, temperature=temperature, pad_token_id=pad_id, **generate_kwargs)
    finally:
        model.train(was_training)
    out = out.cpu()
    completion = out[:, width:]
    keep = torch.ones_like(completion, dtype=torch.bool)
    if eos_id is not None:  # everything after the first end-of-sequence token is padding
        ended = (completion == eos_id).long().cumsum(1)
        keep = (ended == 0) | ((ended == 1) & (completion == eos_id))
    attention = torch.cat([mask.bool(), keep], dim=1)
    labels = out.masked_fill(~attention, -100)
    labels[:, :width] = -100
    doc_start = torch.zeros_like(attention)
    doc_start[torch.arange(len(encoded)), width - torch.tensor([len(e) for e in encoded])] = True
    group = torch.arange(len(prompts)).repeat_interleave(num_samples)
    return {"input_ids": out.masked_fill(~attention, pad_id), "attention_mask": attention.long(), "labels": labels,
            "doc_start": doc_start, "group": group}


def observe_batch(model: nn.Module, learner: Any, batch: dict[str, Tensor],
                  model_keys: Sequence[str] = ("input_ids", "attention_mask", "doc_start")) -> Tensor:
    """One forward of ``batch`` inside ``learner.recording(model)`` (no autograd), then ``learner.observe``.

    Returns the per-token NLL ``[B, L-1]``; call ``learner.step()`` when the optimizer step is complete.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    context = learner.recording(model)
    with torch.no_grad(), context as rec:
        logits = model(**{k: batch[k] for k in model_keys if k in batch}).logits
        nll = token_nll(logits, batch["labels"]).detach()
        learner.observe(Observation(batch=batch, token_nll=nll, recording=rec))
    return nll
