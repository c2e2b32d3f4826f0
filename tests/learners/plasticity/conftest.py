"""Explicit references for the plasticity numerics: Python loops over batch and tokens, per-sample outer products.

They are written independently of the library (no shared helpers) so that the fast GEMM / scan forms are held
against the plain online recursion. Only here do we form per-sample ``[out, in]`` eligibilities.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _flags(flag, shape, default):
    if flag is None:
        return torch.full(shape, default, dtype=torch.bool)
    return flag.to(torch.bool).expand(shape)


def trace_loop(s, lam, reset=None, mask=None, inclusive=True, initial=None):
    """x[t] = a[t] x[t-1] + s[t]; a = 0 at resets, 1 at padding (spike ignored), else lam. s: [B, L, C]."""
    bsz, length, ch = s.shape
    reset, mask = _flags(reset, (bsz, length), False), _flags(mask, (bsz, length), True)
    out = torch.zeros_like(s)
    for b in range(bsz):
        x = torch.zeros(ch, dtype=s.dtype) if initial is None else initial[b].clone()
        for t in range(length):
            if reset[b, t]:
                before = torch.zeros(ch, dtype=s.dtype)
            elif not mask[b, t]:
                before = x
            else:
                before = lam * x
            spike = s[b, t] if mask[b, t] else torch.zeros(ch, dtype=s.dtype)
            x = before + spike
            out[b, t] = x if inclusive else before
    return out


def stdp_terms_loop(s_pre, s_post, lam_pre, lam_post, reset=None, mask=None, inclusive=True):
    """Per-sample, per-token z terms: list over b of lists over t of (ltp_outer [out,in], ltd_outer [out,in])."""
    xp = trace_loop(s_pre, lam_pre, reset, mask, inclusive)
    xo = trace_loop(s_post, lam_post, reset, mask, inclusive)
    bsz, length, _ = s_pre.shape
    mask = _flags(mask, (bsz, length), True)
    terms = []
    for b in range(bsz):
        row = []
        for t in range(length):
            keep = 1.0 if mask[b, t] else 0.0
            row.append((keep * torch.outer(s_post[b, t], xp[b, t]), keep * torch.outer(xo[b, t], s_pre[b, t])))
        terms.append(row)
    return terms


def stdp_loop(
    s_pre, s_post, lam_pre, lam_post, a_plus=1.0, a_minus=1.0, reset=None, mask=None, inclusive=True, row_weight=None
):
    """Online per-step outer-product STDP with W fixed over the sequence, mean over the batch."""
    terms = stdp_terms_loop(s_pre, s_post, lam_pre, lam_post, reset, mask, inclusive)
    dw = torch.zeros(s_post.shape[-1], s_pre.shape[-1], dtype=s_pre.dtype)
    for b, row in enumerate(terms):
        for t, (ltp, ltd) in enumerate(row):
            w = 1.0 if row_weight is None else row_weight[b, t]
            dw += w * (a_plus * ltp - a_minus * ltd)
    return dw / s_pre.shape[0]


def eligibility_loop(
    s_pre,
    s_post,
    lam_pre,
    lam_post,
    gamma,
    a_plus=1.0,
    a_minus=1.0,
    reset=None,
    mask=None,
    inclusive=True,
    reset_eligibility=True,
):
    """Per-sample eligibility e[b, t] = γ e[b, t-1] + z[b, t] as a [B, L, out, in] tensor (tests only)."""
    terms = stdp_terms_loop(s_pre, s_post, lam_pre, lam_post, reset, mask, inclusive)
    bsz, length, _ = s_pre.shape
    reset_f, mask_f = _flags(reset, (bsz, length), False), _flags(mask, (bsz, length), True)
    elig = torch.zeros(bsz, length, s_post.shape[-1], s_pre.shape[-1], dtype=s_pre.dtype)
    for b in range(bsz):
        e = torch.zeros(s_post.shape[-1], s_pre.shape[-1], dtype=s_pre.dtype)
        for t in range(length):
            ltp, ltd = terms[b][t]
            z = a_plus * ltp - a_minus * ltd
            if reset_eligibility and reset_f[b, t]:
                e = z
            elif not mask_f[b, t]:
                e = e  # padding: no decay, no pairs
            else:
                e = gamma * e + z
            elig[b, t] = e
    return elig


def reverse_discount_loop(r, gamma, reset=None, mask=None):
    """y[k] = r[k] + a[k+1] y[k+1] with a = 0 at a document start, 1 at padding, else γ; padded r ignored."""
    bsz, length = r.shape
    reset, mask = _flags(reset, (bsz, length), False), _flags(mask, (bsz, length), True)
    out = torch.zeros_like(r)
    for b in range(bsz):
        y = torch.zeros((), dtype=r.dtype)
        for k in range(length - 1, -1, -1):
            if k + 1 < length:
                a = 0.0 if reset[b, k + 1] else (1.0 if not mask[b, k + 1] else gamma)
                y = a * y
            y = y + (r[b, k] if mask[b, k] else 0.0)
            out[b, k] = y
    return out


def random_spikes(shape, rate=0.3, graded=False, dtype=torch.float64, seed=0):
    """Binary (or signed graded, integer-valued) random spikes."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(shape, generator=g) < rate).to(dtype)
    if graded:
        s = s * torch.randint(-3, 4, shape, generator=g).to(dtype)
    return s


def random_flags(shape, p, seed, first=None):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(shape, generator=g) < p
    if first is not None:
        f[..., 0] = first
    return f


@pytest.fixture
def ref():
    return SimpleNamespace(
        trace_loop=trace_loop,
        stdp_loop=stdp_loop,
        stdp_terms_loop=stdp_terms_loop,
        eligibility_loop=eligibility_loop,
        reverse_discount_loop=reverse_discount_loop,
        random_spikes=random_spikes,
        random_flags=random_flags,
    )
