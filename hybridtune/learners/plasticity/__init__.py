"""Pure numerics of the plastic learners: traces, STDP, LoRA-factor rules, weight dependence, R-STDP.

Everything here is a pure function of tensors (no module state, no trainer): spikes ``[..., L, C]`` with the token
axis as time (dim -2), document starts ``reset [..., L]`` and padding ``mask [..., L]``; weights ``[out, in]``
(``nn.Linear`` layout). Updates are returned as ΔW to add (ascent), except :func:`projected_factor_grads`, which
returns gradients (``-ΔW`` projected), ready for ``.grad``. Batch reduction: sum over tokens, mean over sequences.

* :mod:`.traces` — ``x[t] = a[t] x[t-1] + s[t]`` by an exact chunked scan; reverse discounted cumsum.
* :mod:`.stdp` — ``ΔW = (A+ S_postᵀ X_pre − A− X_postᵀ S_pre) / B`` and its online single-step form.
* :mod:`.factors` — local bottleneck rule and full-rank STDP projected onto LoRA factors.
* :mod:`.bounds` — additive/hard and multiplicative soft bounds, Oja term, update-norm clipping.
* :mod:`.rstdp` — three-factor rules by row-weighted GEMMs, baselines, escape-noise policy gradient.

Example:
    >>> import torch
    >>> from hybridtune.learners.plasticity import stdp_update
    >>> pre = torch.tensor([[1.0], [0.0], [1.0]]); post = torch.tensor([[0.0], [1.0], [1.0]])
    >>> stdp_update(pre, post, decay_pre=0.5, decay_post=0.5, a_minus=0.5).item()
    1.0
"""

from __future__ import annotations

from .bounds import additive_delta, clip_update_norm, hard_bound, hard_bound_delta, oja_delta, soft_bound_delta
from .factors import local_factor_updates, projected_factor_grads
from .rstdp import (
    dense_reward_weights,
    ema_baseline,
    escape_probability,
    group_mean_baseline,
    policy_gradient_update,
    rstdp_update,
    sample_escape_spikes,
    sequence_reward_weights,
)
from .stdp import stdp_delta, stdp_online_step, stdp_terms, stdp_update
from .traces import (
    decay_from_tau,
    discounted_reverse_cumsum,
    reverse_trace_scan,
    trace_scan,
    trace_sequential,
    trace_step,
)

__all__ = [
    "additive_delta",
    "clip_update_norm",
    "decay_from_tau",
    "dense_reward_weights",
    "discounted_reverse_cumsum",
    "reverse_trace_scan",
    "ema_baseline",
    "escape_probability",
    "group_mean_baseline",
    "hard_bound",
    "hard_bound_delta",
    "local_factor_updates",
    "oja_delta",
    "policy_gradient_update",
    "projected_factor_grads",
    "rstdp_update",
    "sample_escape_spikes",
    "sequence_reward_weights",
    "soft_bound_delta",
    "stdp_delta",
    "stdp_online_step",
    "stdp_terms",
    "stdp_update",
    "trace_scan",
    "trace_sequential",
    "trace_step",
]
