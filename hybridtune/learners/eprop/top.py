"""The error at the top of the residual stream: one backward through the final norm and ``lm_head`` only.

While :class:`TopCapture` is attached, a forward hook on the model's final norm keeps its input ``h [B, L, D]`` (the
residual stream after the last block; detached, no graph of the frozen blocks). :func:`top_error` then rebuilds
``logits = lm_head(norm(h))`` from that copy, token chunk by token chunk, and returns ``g = ∂(Σ_t nll[t]) / ∂h``
(the summed next-token loss; callers divide by the number of targets). The frozen blocks never see a backward.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> model = tiny_model("llama")
    >>> batch = tiny_batch()
    >>> with torch.no_grad(), TopCapture(model) as cap:
    ...     _ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ...     g, n = top_error(model, cap.pop(), batch["input_ids"])
    >>> tuple(g.shape), int(n)
    ((2, 16, 64), 30)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TopCapture", "final_norm", "top_error"]

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_norm")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last block and ``lm_head`` (``model.norm`` for Llama-like models, ``ln_f`` for GPT-2)."""
    found = [m for name, m in model.named_modules()
             if name.split(".")[-1] in _NORM_NAMES and not any(part.isdigit() for part in name.split("."))]
    if not found:
        raise ValueError(f"no final norm found in {type(model).__name__} (looked for a top-level module named one of "
                         f"{', '.join(_NORM_NAMES)}); eprop needs the residual stream at the top of the model")
    return found[-1]


def _lm_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head); eprop needs a causal LM")
    return head


class TopCapture:
    """Context manager: keep the input of the final norm of every forward (detached), in call order."""

    def __init__(self, model: nn.Module):
        self.model, self.hidden, self._handle = model, [], None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if args and isinstance(args[0], Tensor):
            self.hidden.append(args[0].detach())

    def __enter__(self) -> TopCapture:
        self._handle = final_norm(self.model).register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self.hidden = None, []

    def pop(self) -> Tensor:
        if not self.hidden:
            raise RuntimeError("no residual stream was captured: run the model forward inside the capture")
        return self.hidden.pop(0)


def top_error(model: nn.Module, hidden: Tensor, labels: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """``(g [B, L, D], n_targets)``: the gradient of the summed next-token NLL w.r.t. the residual stream ``hidden``.

    Labels are shifted as the loss does (target of position t is token t+1, -100 ignored). ``chunk`` tokens at a time
    go through norm + ``lm_head``, so the ``[tokens, vocab]`` logits never exist for the whole batch at once.
    """
    norm, head = final_norm(model), _lm_head(model)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(hidden.device).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    grad = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        stop = min(start + chunk, flat.shape[0])
        tgt = targets[start:stop]
        if not bool((tgt != -100).any()):
            continue
        with torch.enable_grad():
            h = flat[start:stop].detach().requires_grad_(True)
            logits = head(norm(h)).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            loss = F.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum")
            (g,) = torch.autograd.grad(loss, h)
        grad[start:stop] = g.float()
    return grad.view(*hidden.shape[:-1], -1), (targets != -100).sum()
