"""The error at the top of the residual stream: one backward through the final norm and ``lm_head`` only.

While :class:`TopCapture` is attached, a forward hook on the model's final norm keeps its input ``h [B, L, D]`` (the
residual stream after the last block; detached, no graph of the frozen blocks), and, with ``keep_logits``, one on
``lm_head`` keeps the logits the forward computed. :func:`top_error` returns ``g = ∂(Σ_t nll[t]) / ∂h`` (the summed
next-token loss; callers divide by the number of targets), token chunk by token chunk: from the kept logits when
the head is a plain linear map (softmax minus one-hot, times ``W``, back through the norm), else by rebuilding
``logits = lm_head(norm(h))`` from the kept ``h``. The frozen blocks never see a backward.

Example:
    >>> import torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> model = tiny_model("llama")
    >>> batch = tiny_batch()
    >>> with torch.no_grad(), TopCapture(model) as cap:
    ...     _ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ...     hidden, _ = cap.pop()
    ...     g, n = top_error(model, hidden, batch["input_ids"])
    >>> tuple(g.shape), int(n)
    ((2, 16, 64), 30)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TopCapture", "final_norm", "output_head", "linear_head_weight", "top_error", "ERROR_DTYPES"]

ERROR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_norm")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last block and ``lm_head`` (``model.norm`` for Llama-like models, ``ln_f`` for GPT-2)."""
    found = [m for name, m in model.named_modules()
             if name.split(".")[-1] in _NORM_NAMES and not any(part.isdigit() for part in name.split("."))]
    if not found:
        raise ValueError(f"no final norm found in {type(model).__name__} (looked for a top-level module named one of "
                         f"{', '.join(_NORM_NAMES)}); eprop needs the residual stream at the top of the model")
    return found[-1]


def output_head(model: nn.Module) -> nn.Module:
    """The model's ``lm_head`` (its output embeddings); ValueError for a model without one."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head); eprop and rstdp's tail forwards need a causal LM")
    return head


def linear_head_weight(model: nn.Module) -> Tensor | None:
    """``lm_head``'s weight ``[V, D]`` when the head is a plain linear map of its input (an ``nn.Linear`` with no
    submodule: no input encoder, no online transform), so that ``∂loss/∂input = ∂loss/∂logits @ W``; else None."""
    return _plain_weight(model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None)


def _plain_weight(head: nn.Module | None) -> Tensor | None:
    if not isinstance(head, nn.Linear) or any(True for _ in head.children()):
        return None
    weight = head.weight
    return None if weight.dim() != 2 or hasattr(weight, "placements") else weight  # a sharded head: recompute


class TopCapture:
    """Context manager: keep the input of the final norm of every forward (detached), in call order; with
    ``keep_logits``, also the logits ``lm_head`` computed from it (the pieces of a sliced loss, in order), so that
    :func:`top_error` need not compute them again."""

    def __init__(self, model: nn.Module, keep_logits: bool = False, norm: nn.Module | None = None,
                 head: nn.Module | None = None):
        self.model, self.keep_logits = model, keep_logits
        self.norm, self.head = norm, head  # resolved once by the caller, or found on entry
        self.hidden: list[Tensor] = []
        self.logits: list[list[Tensor]] = []
        self._handles: list = []

    def _norm_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if args and isinstance(args[0], Tensor):
            self.hidden.append(args[0].detach())
            self.logits.append([])

    def _head_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, Tensor) and self.logits:
            self.logits[-1].append(output.detach())  # [B, positions, V]: the whole sequence or one slice of it

    def __enter__(self) -> TopCapture:
        norm = self.norm if self.norm is not None else final_norm(self.model)
        self._handles = [norm.register_forward_hook(self._norm_hook)]
        if self.keep_logits:
            head = self.head if self.head is not None else output_head(self.model)
            self._handles.append(head.register_forward_hook(self._head_hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.hidden, self.logits = [], [], []

    def pop(self) -> tuple[Tensor, list[Tensor] | None]:
        """``(hidden [B, L, D], logits pieces or None)`` of the oldest forward not yet popped."""
        if not self.hidden:
            raise RuntimeError("no residual stream was captured: run the model forward inside the capture")
        hidden, pieces = self.hidden.pop(0), self.logits.pop(0)
        covered = sum(p.shape[-2] for p in pieces)
        return hidden, (pieces if self.keep_logits and covered == hidden.shape[-2] else None)


def _logit_error(logits: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    """``∂(Σ nll)/∂logits [N, V]`` of raw ``lm_head`` outputs: softmax minus one-hot, zero where the target is -100,
    through Gemma's soft-capping when the model applies it after ``lm_head``."""
    logits = logits.float()
    if softcap:
        capped = torch.tanh(logits / softcap)
        err = torch.softmax(capped * softcap, dim=-1)
    else:
        err = torch.softmax(logits, dim=-1)
    keep = targets != -100
    err[keep, targets[keep]] -= 1.0
    err[~keep] = 0.0
    if softcap:
        err *= 1.0 - capped.square()
    return err


def top_error(model: nn.Module, hidden: Tensor, labels: Tensor, chunk: int = 512,
              logits: list[Tensor] | None = None, norm: nn.Module | None = None,
              head: nn.Module | None = None, error_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(g [B, L, D], n_targets)``: the gradient of the summed next-token NLL w.r.t. the residual stream ``hidden``.

    Labels are shifted as the loss does (target of position t is token t+1, -100 ignored). ``chunk`` tokens at a time
    go through norm + ``lm_head``, so the ``[tokens, vocab]`` logits never exist for the whole batch at once.
    ``logits``: the pieces :class:`TopCapture` kept from the forward (``[B, positions, V]`` each, in order). With
    them and a plain linear head (:func:`linear_head_weight`) the logits are not computed again: the error goes
    back through ``lm_head`` as ``∂loss/∂logits @ W`` and through the final norm by autograd, the same gradient.
    ``norm`` / ``head``: the final norm and ``lm_head`` when the caller resolved them once (a module walk per call
    costs tens of milliseconds on a 30-block model). ``error_dtype``: the precision of ``∂loss/∂logits @ W`` (the
    softmax and the norm's backward stay float32).
    """
    norm = norm if norm is not None else final_norm(model)
    head = head if head is not None else output_head(model)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(hidden.device)
    grad = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    weight = _plain_weight(head) if logits is not None else None
    if weight is not None:
        weight = weight.detach().to(error_dtype)
    if weight is None:  # rebuild the logits from the kept residual stream, chunk by chunk
        logits = [None]
    width, start = hidden.shape[-1], 0
    for piece in logits:
        stop = hidden.shape[1] if piece is None else start + piece.shape[-2]
        h_piece, t_piece = hidden[:, start:stop].reshape(-1, width), targets[:, start:stop].reshape(-1)
        l_piece = None if piece is None else piece.reshape(-1, piece.shape[-1])
        g_piece = torch.zeros(h_piece.shape, dtype=torch.float32, device=hidden.device)
        for lo in range(0, h_piece.shape[0], chunk):
            hi = min(lo + chunk, h_piece.shape[0])
            tgt = t_piece[lo:hi]
            if not bool((tgt != -100).any()):
                continue
            with torch.enable_grad():
                h = h_piece[lo:hi].detach().requires_grad_(True)
                normed = norm(h)
                if l_piece is None:
                    out = head(normed).float()
                    if cap:
                        out = torch.tanh(out / cap) * cap
                    loss = F.cross_entropy(out, tgt, ignore_index=-100, reduction="sum")
                    (g,) = torch.autograd.grad(loss, h)
                else:
                    err = _logit_error(l_piece[lo:hi], tgt, cap)
                    (g,) = torch.autograd.grad(normed, h, (err.to(error_dtype) @ weight).to(normed.dtype))
            g_piece[lo:hi] = g.float()
        grad[:, start:stop] = g_piece.view(hidden.shape[0], stop - start, width)
        start = stop
    return grad, (targets != -100).sum()
