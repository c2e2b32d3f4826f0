"""Pair-STDP terms with every trace on the *narrow* (rank-r) side: no trace of a layer-wide activity is ever formed.

The two correlation terms of whole-sequence pair STDP (:func:`hybridtune.learners.plasticity.stdp_terms`) are

    LTP = Σ_t w[t] s_post[t] ⊗ x̄_pre[t]          LTD = Σ_t w[t] x̄_post[t] ⊗ s_pre[t]

with ``x̄`` the causal traces (``x̄[t] = Σ_{k<=t} P(k→t) s[k]``, ``P`` the decay product over real tokens in
``(k, t]``, 0 across a document start). Swapping the order of summation moves a trace to the other side, where it
runs *backwards* in time:

    LTP = Σ_k ŝ_post[k] ⊗ s_pre[k],  ŝ_post[k] = Σ_{t>=k} P⁺(k→t) w[t] s_post[t]     (reverse trace, decay λ+)
    LTD = Σ_k s_post[k] ⊗ ŝ_pre[k],  ŝ_pre[k]  = Σ_{t>=k} P⁻(k→t) w[t] s_pre[t]      (reverse trace, decay λ−)

So when one side is narrow (the r bottleneck neurons, or a projection through a LoRA factor), both traces can be
taken on that side — a forward one and a reverse one — and the wide side only enters the two GEMMs. For a spiking
LoRA layer with ``in = 576``, ``r = 8`` this cuts the trace work by ~70x and lets one scan serve all layers at once
(:func:`trace_pairs` concatenates them along channels). Masks and resets mean exactly what they mean in
:mod:`hybridtune.learners.plasticity.traces`; the reverse trace is its :func:`discounted_reverse_cumsum`.

Example:
    >>> import torch
    >>> from hybridtune.learners.plasticity import stdp_terms, trace_scan
    >>> g = torch.Generator().manual_seed(0)
    >>> pre, post = torch.rand(2, 9, 5, generator=g), (torch.rand(2, 9, 3, generator=g) > 0.6).float()
    >>> wide = stdp_terms(pre, trace_scan(pre, 0.8), post, trace_scan(post, 0.6))
    >>> narrow = narrow_stdp_terms(pre, post, decay_pre=0.8, decay_post=0.6, narrow="post")
    >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(wide, narrow))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from .plasticity import reverse_trace_scan, trace_scan

__all__ = ["narrow_post_terms", "narrow_pre_terms", "narrow_stdp_terms", "reverse_trace", "trace_pairs"]


def reverse_trace(s: Tensor, decay: float, *, reset: Tensor | None = None, mask: Tensor | None = None,
                  inclusive: bool = True, chunk: int | None = None) -> Tensor:
    """``ŝ[k] = Σ_{t>=k} P(k→t) s[t]`` (``t > k`` when not ``inclusive``) over the token axis of ``s [..., L, C]``.

    Padded tokens (``mask`` False) contribute nothing and take no decay step; a document start (``reset``) at
    some ``j in (k, t]`` cuts the link. The adjoint of :func:`~hybridtune.learners.plasticity.trace_scan`.

    Example:
        >>> reverse_trace(torch.tensor([[1.0], [0.0], [2.0]]), 0.5).flatten().tolist()
        [1.5, 1.0, 2.0]
    """
    out = reverse_trace_scan(s, decay, reset=reset, mask=mask, chunk=chunk)
    if not inclusive:
        out = out - (s * mask[..., None].to(out.dtype) if mask is not None else s)
    return out


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def narrow_post_terms(pre: Tensor, fwd: Tensor, rev: Tensor, weight: Tensor, mask: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
    """``(LTP, LTD)`` summed over tokens and sequences when the *post* side is narrow.

    ``pre [..., L, D]``; ``fwd`` = forward trace of the post spikes (decay λ−), ``rev`` = reverse trace of
    ``weight · post`` (decay λ+), both ``[..., L, C]``; ``weight [..., L]`` = row weight times mask; ``mask`` drops
    padded pre spikes (applied on the narrow side). Returns ``[C, D]`` each: ``LTP = (mask · rev)ᵀ pre``,
    ``LTD = (weight · fwd)ᵀ pre``.
    """
    pre2 = _rows(pre)
    rev_m = rev if mask is None else rev * mask[..., None].to(rev.dtype)
    return _rows(rev_m).T @ pre2, _rows(fwd * weight[..., None]).T @ pre2


def narrow_pre_terms(post: Tensor, fwd: Tensor, rev: Tensor, weight: Tensor, mask: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
    """``(LTP, LTD)`` summed over tokens and sequences when the *pre* side is narrow.

    ``post [..., L, D]``; ``fwd`` = forward trace of the pre spikes (decay λ+), ``rev`` = reverse trace of
    ``weight · pre`` (decay λ−), both ``[..., L, C]``; ``weight [..., L]`` = row weight times mask. Returns
    ``[D, C]`` each: ``LTP = (weight · post)ᵀ fwd``, ``LTD = (mask · post)ᵀ rev``.
    """
    post_m = post if mask is None else post * mask[..., None].to(post.dtype)
    return _rows(post * weight[..., None]).T @ _rows(fwd), _rows(post_m).T @ _rows(rev)


def trace_pairs(narrows: list[Tensor], fwd_decay: float, rev_decay: float, weight: Tensor, *,
                reset: Tensor | None = None, mask: Tensor | None = None, inclusive: bool = True,
                chunk: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """Forward trace (``fwd_decay``) of each narrow tensor and reverse trace (``rev_decay``) of ``weight ·`` it, by
    one scan each over all of them concatenated along channels (they share the ``[B, L]`` masks)."""
    if not narrows:
        return []
    cat = torch.cat(narrows, dim=-1)
    fwd = trace_scan(cat, fwd_decay, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    rev = reverse_trace(cat * weight[..., None], rev_decay, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    sizes = [t.shape[-1] for t in narrows]
    return list(zip(fwd.split(sizes, dim=-1), rev.split(sizes, dim=-1)))


def narrow_stdp_terms(pre: Tensor, post: Tensor, *, decay_pre: float, decay_post: float, narrow: str = "post",
                      reset: Tensor | None = None, mask: Tensor | None = None, row_weight: Tensor | None = None,
                      inclusive: bool = True, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Same result as ``stdp_terms(pre, trace(pre), post, trace(post), row_weight=, mask=)`` (mean over sequences),
    with the traces on the ``narrow`` side (``"post"`` or ``"pre"``). ``pre [..., L, in]``, ``post [..., L, out]``.

    Example:
        >>> s = torch.tensor([[1.0], [1.0]])
        >>> [t.item() for t in narrow_stdp_terms(s, s, decay_pre=1.0, decay_post=1.0)]
        [3.0, 3.0]
    """
    if narrow not in ("post", "pre"):
        raise ValueError(f"narrow must be 'post' or 'pre' (got {narrow!r})")
    lead = pre.shape[:-1]
    valid = torch.ones(lead, dtype=pre.dtype, device=pre.device) if mask is None else mask.to(pre.dtype)
    weight = valid if row_weight is None else valid * row_weight.to(pre.dtype)
    bsz = max(1, int(torch.tensor(lead[:-1]).prod()) if len(lead) > 1 else 1)
    kw = dict(reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    if narrow == "post":
        ((fwd, rev),) = trace_pairs([post.to(pre.dtype)], decay_post, decay_pre, weight, **kw)
        ltp, ltd = narrow_post_terms(pre, fwd, rev, weight, mask)
    else:
        ((fwd, rev),) = trace_pairs([pre], decay_pre, decay_post, weight, **kw)
        ltp, ltd = narrow_pre_terms(post.to(pre.dtype), fwd, rev, weight, mask)
    return ltp / bsz, ltd / bsz
