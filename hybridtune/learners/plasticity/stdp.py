"""Pair-based, trace-based STDP for a whole sequence as two GEMMs over N = batch x tokens.

For one sequence (weight ``[out, in]``, pre spikes ``s_pre [L, in]``, post spikes ``s_post [L, out]``) the online
rule, with W held fixed over the sequence, sums per-token outer products

    ΔW = Σ_t  A+ · s_post[t] ⊗ x_pre[t]  −  A− · x_post[t] ⊗ s_pre[t]

which, stacking the tokens of every sequence as rows (N = B·L) and averaging over the B sequences, is

    ΔW = (A+ · S_postᵀ X_pre − A− · X_postᵀ S_pre) / B            (two [out, N] x [N, in] GEMMs)

Conventions (see :mod:`.traces` for the trace recursion, resets at document starts and padding):

* ``inclusive=True`` (default; SpikingJelly / Norse / BindsNET: traces updated before use): ``x[t]`` includes
  ``s[t]``, so a pre and a post spike at the same token pair in both terms; the window is
  ``K[t,k] = A+ λ+^(t-k)`` for pre at k <= t, ``-A− λ−^(k-t)`` for post at t <= k, and ``A+ − A−`` on the diagonal.
* ``inclusive=False``: ``x[t] = a[t] x[t-1]`` excludes ``s[t]``; only pre strictly before post potentiates, only
  post strictly before pre depresses, the diagonal is 0.
* Batch reduction: sum over tokens, **mean over sequences** (the learning rate does not depend on batch size).
* Sign: functions here return the update ΔW to *add* to the weight (ascent); a grad-slot learner writes ``-ΔW``.
* Row weights ``w[b, t]`` (for three-factor rules, see :mod:`.rstdp`) scale token t's pairs with post at t:
  ``(w ⊙ S_post)ᵀ X_pre`` and ``(w ⊙ X_post)ᵀ S_pre``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .traces import _check_spikes, _flags, _float_dtype, trace_scan, trace_step

__all__ = ["stdp_delta", "stdp_online_step", "stdp_terms", "stdp_update"]


def _batch_count(s: Tensor, reduction: str) -> float:
    if reduction == "mean":
        return float(max(1, math.prod(s.shape[:-2])))
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")


def _flat_pairs(s_pre: Tensor, x_pre: Tensor, s_post: Tensor, x_post: Tensor, row_weight: Tensor | None,
                mask: Tensor | None, reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Check shapes; flatten to N = batch x tokens rows; mask pre spikes; weight the post side's rows."""
    for name, t in (("s_pre", s_pre), ("x_pre", x_pre), ("s_post", s_post), ("x_post", x_post)):
        _check_spikes(t, name)
    if x_pre.shape != s_pre.shape or x_post.shape != s_post.shape or s_pre.shape[:-1] != s_post.shape[:-1]:
        raise ValueError(
            "shapes must be s_pre = x_pre = [..., L, in] and s_post = x_post = [..., L, out] "
            f"(got s_pre {tuple(s_pre.shape)}, x_pre {tuple(x_pre.shape)}, s_post {tuple(s_post.shape)}, "
            f"x_post {tuple(x_post.shape)})"
        )
    dtype = _float_dtype(x_pre)
    denom = _batch_count(s_pre, reduction)
    n_in, n_out = s_pre.shape[-1], s_post.shape[-1]
    sp, xp = s_pre.to(dtype).reshape(-1, n_in), x_pre.to(dtype).reshape(-1, n_in)
    so, xo = s_post.to(dtype).reshape(-1, n_out), x_post.to(dtype).reshape(-1, n_out)
    rows = None
    if mask is not None:
        rows = _flags(mask, s_pre.shape[:-1], "mask", True, s_pre.device).reshape(-1, 1).to(dtype)
        sp = sp * rows
    if row_weight is not None:
        try:
            w = torch.broadcast_to(row_weight.to(dtype), s_pre.shape[:-1]).reshape(-1, 1)
        except RuntimeError:
            raise ValueError(
                f"row_weight must have shape {tuple(s_pre.shape[:-1])}, got {tuple(row_weight.shape)}"
            ) from None
        rows = w if rows is None else rows * w
    if rows is not None:
        so, xo = so * rows, xo * rows
    return sp, xp, so, xo, denom


def stdp_terms(s_pre: Tensor, x_pre: Tensor, s_post: Tensor, x_post: Tensor, *, row_weight: Tensor | None = None,
               mask: Tensor | None = None, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """The two correlation GEMMs of pair STDP: ``(LTP, LTD) = (S_postᵀ X_pre, X_postᵀ S_pre) / B``.

    ``s_pre``, ``x_pre``: ``[..., L, in]``; ``s_post``, ``x_post``: ``[..., L, out]`` (traces from
    :func:`~.traces.trace_scan`); ``row_weight``: ``[..., L]`` multiplies the post side row-wise; ``mask``:
    ``[..., L]`` zeroes padded spikes. Returns two ``[out, in]`` tensors; combine them as ``A+ LTP − A− LTD``
    (or with weight dependence, :mod:`.bounds`).

    Example:
        >>> s = torch.tensor([[1.0], [1.0]])
        >>> ltp, ltd = stdp_terms(s, s, s, s)
        >>> ltp.item(), ltd.item()
        (2.0, 2.0)
    """
    sp, xp, so, xo, denom = _flat_pairs(s_pre, x_pre, s_post, x_post, row_weight, mask, reduction)
    return (so.T @ xp) / denom, (xo.T @ sp) / denom


def stdp_delta(s_pre: Tensor, x_pre: Tensor, s_post: Tensor, x_post: Tensor, *, a_plus: float = 1.0,
               a_minus: float = 1.0, row_weight: Tensor | None = None, mask: Tensor | None = None,
               reduction: str = "mean") -> Tensor:
    """ΔW from precomputed traces: ``(A+ S_postᵀ X_pre − A− X_postᵀ S_pre) / B`` as one GEMM plus one GEMM-accumulate.

    For learners that compute the traces themselves (e.g. carrying them across calls with ``trace_scan(initial=)``).
    Arguments as in :func:`stdp_terms`; equals ``A+ LTP − A− LTD`` without materialising the two terms.

    Example:
        >>> s = torch.tensor([[1.0], [1.0]])
        >>> stdp_delta(s, s, s, s, a_minus=0.5).item()
        1.0
    """
    sp, xp, so, xo, denom = _flat_pairs(s_pre, x_pre, s_post, x_post, row_weight, mask, reduction)
    return torch.mm(so.T, xp).mul_(a_plus / denom).addmm_(xo.T, sp, alpha=-a_minus / denom)


def stdp_update(s_pre: Tensor, s_post: Tensor, *, decay_pre: float | Tensor, decay_post: float | Tensor,
                a_plus: float = 1.0, a_minus: float = 1.0, inclusive: bool = True, reset: Tensor | None = None,
                mask: Tensor | None = None, row_weight: Tensor | None = None, reduction: str = "mean",
                chunk: int | None = None) -> Tensor:
    """Whole-sequence STDP update ``ΔW = (A+ S_postᵀ X_pre − A− X_postᵀ S_pre) / B`` (traces by chunked scan).

    ``s_pre [..., L, in]``, ``s_post [..., L, out]`` → ``ΔW [out, in]``. ``decay_pre`` / ``decay_post`` are λ+ / λ−
    of the pre and post traces; ``reset`` restarts both traces at document starts, ``mask`` drops padding.
    Equal to summing :func:`stdp_online_step` over the tokens.

    Example (3 tokens, λ = 0.5; pre spikes at 0 and 2, post at 1 and 2):
        >>> pre = torch.tensor([[1.0], [0.0], [1.0]]); post = torch.tensor([[0.0], [1.0], [1.0]])
        >>> stdp_update(pre, post, decay_pre=0.5, decay_post=0.5, a_minus=0.5).item()  # 1.75 - 0.5*1.5
        1.0
        >>> stdp_update(pre, post, decay_pre=0.5, decay_post=0.5, a_minus=0.5, inclusive=False).item()
        0.5
    """
    x_pre = trace_scan(s_pre, decay_pre, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    x_post = trace_scan(s_post, decay_post, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    return stdp_delta(
        s_pre,
        x_pre,
        s_post,
        x_post,
        a_plus=a_plus,
        a_minus=a_minus,
        row_weight=row_weight,
        mask=mask,
        reduction=reduction,
    )


def stdp_online_step(s_pre_t: Tensor, s_post_t: Tensor, x_pre: Tensor, x_post: Tensor, *, decay_pre: float | Tensor,
                     decay_post: float | Tensor, a_plus: float = 1.0, a_minus: float = 1.0, inclusive: bool = True,
                     reset_t: Tensor | None = None, mask_t: Tensor | None = None,
                     reduction: str = "mean") -> tuple[Tensor, Tensor, Tensor]:
    """One token of online STDP (for loops where a reward arrives between steps); returns ``(ΔW_t, x_pre, x_post)``.

    ``x' = a x + u`` for both traces, then ``ΔW_t = (A+ s_postᵀ x̂_pre − A− x̂_postᵀ s_pre) / B`` where ``x̂ = x'``
    (inclusive) or ``x̂ = a x`` (exclusive). ``s_pre_t [B, in]``, ``s_post_t [B, out]``, traces ``[B, in]`` /
    ``[B, out]``, flags ``[B]``. One ``[out, B] x [B, in]`` GEMM per term; never a ``[B, out, in]`` tensor.

    Example:
        >>> dw, xp, xo = stdp_online_step(torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1),
        ...                               decay_pre=0.5, decay_post=0.5, a_minus=0.5)
        >>> dw.item(), xp.item()
        (0.5, 1.0)
    """
    if s_pre_t.dim() != 2 or s_post_t.dim() != 2 or s_pre_t.shape[0] != s_post_t.shape[0]:
        raise ValueError(
            f"s_pre_t must be [B, in] and s_post_t [B, out] (got {tuple(s_pre_t.shape)}, {tuple(s_post_t.shape)})"
        )
    dtype = _float_dtype(s_pre_t)
    if mask_t is not None:
        keep = mask_t.to(torch.bool)[..., None]
        s_pre_t, s_post_t = s_pre_t.to(dtype) * keep, s_post_t.to(dtype) * keep
    new_pre = trace_step(x_pre, s_pre_t, decay_pre, reset_t=reset_t, mask_t=mask_t)
    new_post = trace_step(x_post, s_post_t, decay_post, reset_t=reset_t, mask_t=mask_t)
    use_pre = new_pre if inclusive else new_pre - s_pre_t.to(dtype)
    use_post = new_post if inclusive else new_post - s_post_t.to(dtype)
    denom = _batch_count(s_pre_t.unsqueeze(-2), reduction)
    s_pre_f, s_post_f = s_pre_t.to(dtype), s_post_t.to(dtype)
    dw = torch.mm(s_post_f.T, use_pre).mul_(a_plus / denom).addmm_(use_post.T, s_pre_f, alpha=-a_minus / denom)
    return dw, new_pre, new_post
