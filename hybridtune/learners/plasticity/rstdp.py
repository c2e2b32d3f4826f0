"""Reward-modulated STDP (three-factor rules) without per-sample ``[batch, out, in]`` eligibility tensors.

Per sequence b, the STDP term at token t is ``z[t] = A+ s_post[t] ⊗ x_pre[t] − A− x_post[t] ⊗ s_pre[t]`` and the
eligibility ``e[t] = γ e[t-1] + z[t]`` (reset at document starts when asked, frozen over padding). Gating it by
reward minus baseline gives

* per-sequence reward ``R_b`` arriving after the last token:
  ``ΔW = mean_b (R_b − b̄) e_b[L-1] = mean_b Σ_t (R_b − b̄) γ^(L-1-t) z_b[t]``;
* dense per-token reward ``r[b,t]`` gating ``e[b,t]`` (reward at t credits pairs up to and including t):
  ``ΔW = mean_b Σ_t (r[b,t] − b̄) e_b[t] = mean_b Σ_k w[b,k] z_b[k]``, ``w[b,k] = Σ_{t>=k} γ^(t-k) (r[b,t] − b̄)``.

Both are the two STDP GEMMs of :func:`~.stdp.stdp_terms` with row weights ``w[b,t]``; with per-sequence rewards
``w[b,t] = (R_b − b̄) γ^(L-1-t)``, with dense rewards a reverse discounted cumsum (chunked scan, stable at any L).

Escape-noise neurons make the rule a policy-gradient estimator: spikes ``s ~ Bernoulli(p)``,
``p = σ(β (v − θ))`` with ``v = W x``; then ``∂ log π / ∂W = β (s − p) ⊗ x``, i.e. the post term is ``β (s − p)``
and, with ``γ = 1``, ``E[(R − b) Σ_t β (s[t] − p[t]) ⊗ x[t]] = ∇_W E[R]`` (REINFORCE) for any baseline b that does
not depend on the sample's own spikes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stdp import _flat_pairs, stdp_delta
from .traces import _decay_tensor, _flags, _float_dtype, discounted_reverse_cumsum, trace_scan

__all__ = [
    "dense_reward_weights",
    "ema_baseline",
    "escape_probability",
    "group_mean_baseline",
    "policy_gradient_update",
    "rstdp_update",
    "sample_escape_spikes",
    "sequence_reward_weights",
]


def ema_baseline(
    previous: Tensor | None, reward: Tensor, *, momentum: float = 0.9, mask: Tensor | None = None
) -> Tensor:
    """EMA reward baseline: ``b̄ ← m b̄ + (1 − m) mean(R)``; the first call (``previous=None``) returns ``mean(R)``.

    ``reward`` is any shape (per-sequence ``[B]`` or per-token ``[B, L]`` with ``mask`` for padding). Returns a 0-d
    tensor; the caller keeps it (e.g. in its ``state_dict``).

    Example:
        >>> b = ema_baseline(None, torch.tensor([1.0, 3.0]))
        >>> ema_baseline(b, torch.tensor([4.0]), momentum=0.5).item()
        3.0
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1) (got {momentum!r})")
    r = reward.to(_float_dtype(reward))
    if mask is not None:
        keep = _flags(mask, r.shape, "mask", True, r.device)
        mean = (r * keep).sum() / keep.sum().clamp_min(1)
    else:
        mean = r.mean()
    if previous is None:
        return mean.detach()
    return (momentum * previous.to(mean) + (1.0 - momentum) * mean).detach()


def group_mean_baseline(reward: Tensor, groups: Tensor, *, leave_one_out: bool = False) -> Tensor:
    """Per-prompt baseline: the mean reward of the samples that share a group id (a stimulus-specific baseline).

    ``b_i = mean_{j in g(i)} R_j``, or with ``leave_one_out`` ``b_i = mean_{j in g(i), j != i} R_j`` (does not use
    the sample's own reward, so the policy gradient stays unbiased). A group of one has ``b_i = R_i`` (advantage 0).
    ``reward``, ``groups``: ``[B]``.

    Example:
        >>> group_mean_baseline(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 7])).tolist()
        [2.0, 2.0, 5.0]
        >>> group_mean_baseline(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 7]), leave_one_out=True).tolist()
        [3.0, 1.0, 5.0]
    """
    if reward.dim() != 1 or groups.shape != reward.shape:
        raise ValueError(f"reward and groups must both be [B] (got {tuple(reward.shape)} and {tuple(groups.shape)})")
    r = reward.to(_float_dtype(reward))
    _, inverse = torch.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    counts = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    size = counts[inverse]
    if leave_one_out:
        others = (sums[inverse] - r) / (size - 1).clamp_min(1)
        return torch.where(size > 1, others, r)
    return sums[inverse] / size


def sequence_reward_weights(
    reward: Tensor,
    length: int,
    gamma: float | Tensor,
    *,
    baseline: float | Tensor = 0.0,
    mask: Tensor | None = None,
    reset: Tensor | None = None,
) -> Tensor:
    """Row weights for a per-sequence reward: ``w[b,t] = (R_b − b̄) γ^(#real tokens in (t, L-1])``.

    Zero at padded tokens and, when ``reset`` is given, before the last document start of the row (the
    eligibility restarted there). ``reward [...]`` (one per sequence), ``baseline`` scalar or ``[...]``, flags
    ``[..., L]``. Returns ``[..., L]``, to pass as ``row_weight``.

    Example:
        >>> sequence_reward_weights(torch.tensor([3.0]), 3, 0.5, baseline=1.0).tolist()
        [[0.5, 1.0, 2.0]]
    """
    r = reward.to(_float_dtype(reward))
    lam = _decay_tensor(gamma, r.dtype, r.device, name="gamma")
    shape = (*r.shape, length)
    valid = _flags(mask, torch.Size(shape), "mask", True, r.device)
    rst = _flags(reset, torch.Size(shape), "reset", False, r.device)
    n = valid.cumsum(-1)
    seg = rst.cumsum(-1)
    after = (n[..., -1:] - n).to(r.dtype)  # real tokens strictly after t
    same_doc = seg == seg[..., -1:]
    adv = r - torch.as_tensor(baseline, dtype=r.dtype, device=r.device)
    return torch.where(
        valid & same_doc, adv[..., None] * torch.pow(lam, after), torch.zeros((), dtype=r.dtype, device=r.device)
    )


def dense_reward_weights(
    reward: Tensor,
    gamma: float | Tensor,
    *,
    baseline: float | Tensor = 0.0,
    mask: Tensor | None = None,
    reset: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Row weights for dense per-token rewards: ``w[b,k] = Σ_{t>=k} γ^(t-k) (r[b,t] − b̄)`` (reverse discounted cumsum).

    The discount counts real tokens only and the sum stops at the next document start (``reset``); padded rewards
    are ignored. ``reward [..., L]``; ``baseline`` scalar or broadcastable to it. Returns ``[..., L]``.

    Example:
        >>> dense_reward_weights(torch.tensor([[1.0, 0.0, 2.0]]), 0.5).tolist()
        [[1.5, 1.0, 2.0]]
    """
    r = reward.to(_float_dtype(reward))
    adv = r - torch.as_tensor(baseline, dtype=r.dtype, device=r.device)
    w = discounted_reverse_cumsum(adv, gamma, reset=reset, mask=mask, chunk=chunk)
    if mask is not None:
        w = w * _flags(mask, r.shape, "mask", True, r.device)
    return w


def rstdp_update(
    s_pre: Tensor,
    s_post: Tensor,
    reward: Tensor,
    *,
    gamma: float | Tensor,
    decay_pre: float | Tensor,
    decay_post: float | Tensor,
    baseline: float | Tensor = 0.0,
    a_plus: float = 1.0,
    a_minus: float = 1.0,
    inclusive: bool = True,
    reset: Tensor | None = None,
    reset_eligibility: bool = True,
    mask: Tensor | None = None,
    reduction: str = "mean",
    chunk: int | None = None,
) -> Tensor:
    """R-STDP update ``ΔW = A+ (w ⊙ S_post)ᵀ X_pre − A− (w ⊙ X_post)ᵀ S_pre`` (mean over sequences).

    ``reward`` shaped like the sequence dims of the spikes (``[B]`` for ``s [B, L, C]``) is a per-sequence reward
    (:func:`sequence_reward_weights`); shaped ``[B, L]`` it is dense (:func:`dense_reward_weights`). ``reset``
    restarts the STDP traces at document starts and, if ``reset_eligibility``, the eligibility too.

    Example:
        >>> pre = torch.tensor([[[1.0], [0.0], [1.0]]]); post = torch.tensor([[[0.0], [1.0], [1.0]]])
        >>> rstdp_update(pre, post, torch.tensor([2.0]), gamma=1.0, decay_pre=0.5, decay_post=0.5,
        ...              a_minus=0.5).item()  # 2 x the plain STDP update (1.0)
        2.0
    """
    seq_shape, length = s_pre.shape[:-2], s_pre.shape[-2]
    elig_reset = reset if reset_eligibility else None
    if reward.shape == seq_shape:
        weight = sequence_reward_weights(reward, length, gamma, baseline=baseline, mask=mask, reset=elig_reset)
    elif reward.shape == s_pre.shape[:-1]:
        weight = dense_reward_weights(reward, gamma, baseline=baseline, mask=mask, reset=elig_reset, chunk=chunk)
    else:
        raise ValueError(
            f"reward must be per sequence {tuple(seq_shape)} or per token {tuple(s_pre.shape[:-1])}, "
            f"got {tuple(reward.shape)}"
        )
    x_pre = trace_scan(s_pre, decay_pre, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    x_post = trace_scan(s_post, decay_post, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk)
    return stdp_delta(
        s_pre, x_pre, s_post, x_post, a_plus=a_plus, a_minus=a_minus, row_weight=weight, mask=mask, reduction=reduction
    )


def escape_probability(v: Tensor, theta: Tensor | float, beta: float) -> Tensor:
    """Escape-noise firing probability ``p = σ(β (v − θ))`` (β → ∞ recovers the deterministic Heaviside neuron).

    Example:
        >>> escape_probability(torch.tensor([0.0, 1.0]), 1.0, 2.0).tolist()
        [0.11920291930437088, 0.5]
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta!r})")
    return torch.sigmoid(beta * (v - torch.as_tensor(theta, dtype=v.dtype, device=v.device)))


def sample_escape_spikes(
    v: Tensor, theta: Tensor | float, beta: float, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Stochastic (escape-noise) neuron: ``p = σ(β (v − θ))``, ``s ~ Bernoulli(p)``; returns ``(s, p)``.

    Example:
        >>> s, p = sample_escape_spikes(torch.zeros(4), 0.0, 1.0, generator=torch.Generator().manual_seed(0))
        >>> p.tolist(), bool(((s == 0) | (s == 1)).all())
        ([0.5, 0.5, 0.5, 0.5], True)
    """
    p = escape_probability(v, theta, beta)
    return torch.bernoulli(p.detach(), generator=generator), p


def policy_gradient_update(
    x_pre: Tensor,
    s_post: Tensor,
    p_post: Tensor,
    row_weight: Tensor,
    *,
    beta: float,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Policy-gradient (escape-noise) three-factor update ``ΔW = mean_b Σ_t w[b,t] β (s[b,t] − p[b,t]) ⊗ x[b,t]``.

    ``β (s − p) ⊗ x`` is ``∂ log π / ∂W`` of Bernoulli spikes with ``p = σ(β (W x − θ))``, so with row weights
    from :func:`sequence_reward_weights` at ``γ = 1`` this is the REINFORCE estimate of ``∇_W E[R]`` (ascent).
    ``x_pre [..., L, in]`` is what the membrane is linear in (the input itself for a memoryless neuron; its leaky
    trace for a leaky integrator without reset); ``s_post``, ``p_post``: ``[..., L, out]``; ``row_weight [..., L]``.

    Example:
        >>> x = torch.tensor([[[1.0, 2.0]]]); s = torch.tensor([[[1.0]]]); p = torch.tensor([[[0.25]]])
        >>> policy_gradient_update(x, s, p, torch.tensor([[2.0]]), beta=1.0).tolist()
        [[1.5, 3.0]]
    """
    if s_post.shape != p_post.shape:
        raise ValueError(
            f"s_post and p_post must have the same shape (got {tuple(s_post.shape)}, {tuple(p_post.shape)})"
        )
    dtype = _float_dtype(x_pre)
    post = beta * (s_post.to(dtype) - p_post.to(dtype))
    _, xp, so, _, denom = _flat_pairs(x_pre, x_pre, post, post, row_weight, mask, reduction)
    return so.T @ xp / denom
