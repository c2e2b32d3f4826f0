"""STDP on LoRA factors ``W_eff = W0 + s·B A`` (``A [r, in]``, ``B [out, r]``, ``s = scaling``) without out x in.

Two rules:

* **Local bottleneck rule** — the adapter's bottleneck neurons (``h = x Aᵀ`` through the spiking neuron, spikes
  ``S_h [..., L, r]``) are a population of their own: ``ΔA = STDP(pre = S_in, post = S_h)`` (``[r, in]``) and,
  when the adapter's output is spiking too, ``ΔB = STDP(pre = S_h, post = S_out)`` (``[out, r]``).
* **Projected full-rank rule** — take ``G = −ΔW`` (the full-rank STDP update of :func:`~.stdp.stdp_update`) as a
  pseudo-gradient of ``W_eff``; the chain rule gives ``G_A = s Bᵀ G`` and ``G_B = s G Aᵀ``, computed as

      G_A = −s [A+ (S_post B)ᵀ X_pre − A− (X_post B)ᵀ S_pre] / Bsz          (r x in)
      G_B = −s [A+ S_postᵀ (X_pre Aᵀ) − A− X_postᵀ (S_pre Aᵀ)] / Bsz        (out x r)

  at cost ``O(N r (in + out))``. These are *gradients* (descent direction; write them into ``.grad``). With the
  usual LoRA init ``B = 0``, ``G_A = 0``: such adapters need a small nonzero B (or B updated first).
  Weight-dependent (soft-bound) rules need ``W_eff`` elementwise and so do not apply to this form.
"""

from __future__ import annotations

from torch import Tensor

from .stdp import _flat_pairs, stdp_update

__all__ = ["local_factor_updates", "projected_factor_grads"]


def projected_factor_grads(s_pre: Tensor, x_pre: Tensor, s_post: Tensor, x_post: Tensor, lora_A: Tensor, lora_B: Tensor,
                           *, scaling: float, a_plus: float = 1.0, a_minus: float = 1.0,
                           row_weight: Tensor | None = None, mask: Tensor | None = None,
                           reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """Full-rank STDP projected onto LoRA factors: ``(G_A, G_B) = (s Bᵀ G, s G Aᵀ)`` with ``G = −ΔW``, no out x in.

    ``s_pre``, ``x_pre``: ``[..., L, in]`` (spikes and traces entering the adapted linear); ``s_post``,
    ``x_post``: ``[..., L, out]``; ``lora_A [r, in]``, ``lora_B [out, r]``; ``row_weight`` / ``mask``:
    ``[..., L]`` as in :func:`~.stdp.stdp_terms`. Returns gradients shaped like ``lora_A`` and ``lora_B``.

    Example:
        >>> import torch
        >>> s = torch.ones(2, 3)
        >>> ga, gb = projected_factor_grads(s, s, s, s, torch.ones(1, 3), torch.ones(3, 1), scaling=1.0, a_minus=0.0)
        >>> ga.tolist(), gb.flatten().tolist()
        ([[-6.0, -6.0, -6.0]], [-6.0, -6.0, -6.0])
    """
    n_in, n_out = s_pre.shape[-1], s_post.shape[-1]
    if lora_A.dim() != 2 or lora_B.dim() != 2 or lora_A.shape[1] != n_in or lora_B.shape != (n_out, lora_A.shape[0]):
        raise ValueError(
            f"lora_A must be [r, {n_in}] and lora_B [{n_out}, r] (got lora_A {tuple(lora_A.shape)}, "
            f"lora_B {tuple(lora_B.shape)})"
        )
    sp, xp, so, xo, denom = _flat_pairs(s_pre, x_pre, s_post, x_post, row_weight, mask, reduction)
    a_mat, b_mat = lora_A.to(sp.dtype), lora_B.to(sp.dtype)
    # Both sides go through the rank-r bottleneck first: [N, out] @ [out, r] and [N, in] @ [in, r].
    grad_a = -(scaling / denom) * (a_plus * (so @ b_mat).T @ xp - a_minus * (xo @ b_mat).T @ sp)
    grad_b = -(scaling / denom) * (a_plus * so.T @ (xp @ a_mat.T) - a_minus * xo.T @ (sp @ a_mat.T))
    return grad_a, grad_b


def local_factor_updates(s_in: Tensor, s_h: Tensor, s_out: Tensor | None = None, *, decay_pre: float | Tensor,
                         decay_post: float | Tensor, a_plus: float = 1.0, a_minus: float = 1.0, inclusive: bool = True,
                         reset: Tensor | None = None, mask: Tensor | None = None, row_weight: Tensor | None = None,
                         reduction: str = "mean") -> tuple[Tensor, Tensor | None]:
    """Local STDP on the bottleneck: ``ΔA = STDP(S_in → S_h)`` ``[r, in]``, ``ΔB = STDP(S_h → S_out)`` ``[out, r]``.

    Each factor is its own pre→post synapse with its own traces (:func:`~.stdp.stdp_update`); ``ΔB`` is ``None``
    when ``s_out`` is not given (the adapter output is not spiking). Returns updates to add (ascent).

    Example:
        >>> import torch
        >>> s_in = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); s_h = torch.tensor([[0.0], [1.0]])
        >>> d_a, d_b = local_factor_updates(s_in, s_h, decay_pre=0.5, decay_post=0.5, a_minus=0.0)
        >>> d_a.tolist(), d_b
        ([[0.5, 1.0]], None)
    """
    kwargs = dict(
        decay_pre=decay_pre,
        decay_post=decay_post,
        a_plus=a_plus,
        a_minus=a_minus,
        inclusive=inclusive,
        reset=reset,
        mask=mask,
        row_weight=row_weight,
        reduction=reduction,
    )
    delta_a = stdp_update(s_in, s_h, **kwargs)
    delta_b = None if s_out is None else stdp_update(s_h, s_out, **kwargs)
    return delta_a, delta_b
