"""The narrow-side (rank-r) trace forms the learners use equal the plasticity reference with wide traces; the reverse
trace equals its defining sum; escape-noise pieces equal their definitions."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from hybridtune.learners.escape import (
    escape_scores,
    graded_escape_log_prob,
    membrane_noise_input,
    noise_projections,
)
from hybridtune.learners.narrow import narrow_stdp_terms, reverse_trace
from hybridtune.learners.plasticity import stdp_terms, trace_scan, trace_sequential
from hybridtune.learners.plasticity.rstdp_learner import leaky_scan


def _flags(gen, bsz, length):
    mask = torch.rand(bsz, length, generator=gen) > 0.2
    reset = torch.rand(bsz, length, generator=gen) > 0.85
    return mask, reset


@pytest.mark.parametrize("inclusive", [True, False])
def test_reverse_trace_is_the_defining_sum(inclusive):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 30, 3, generator=gen)
    mask, reset = _flags(gen, 2, 30)
    got = reverse_trace(s, 0.7, reset=reset, mask=mask, inclusive=inclusive)
    sl, ml, rl = s.tolist(), mask.tolist(), reset.tolist()  # plain Python: the loop below is the definition
    want = [[[0.0] * 3 for _ in range(30)] for _ in range(2)]
    for b in range(2):
        for k in range(30):
            gain = 1.0
            for t in range(k, 30):
                if t > k:
                    if rl[b][t]:
                        break
                    if ml[b][t]:
                        gain *= 0.7
                if (t > k or inclusive) and ml[b][t]:
                    for c in range(3):
                        want[b][k][c] += gain * sl[b][t][c]
    want = torch.tensor(want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("narrow", ["post", "pre"])
@pytest.mark.parametrize("inclusive", [True, False])
def test_narrow_terms_equal_the_wide_reference_with_masks_resets_and_row_weights(narrow, inclusive):
    gen = torch.Generator().manual_seed(1)
    pre = torch.randn(3, 200, 6, generator=gen)
    post = (torch.rand(3, 200, 4, generator=gen) > 0.6).float() * torch.randn(3, 200, 4, generator=gen)
    mask, reset = _flags(gen, 3, 200)
    w = torch.randn(3, 200, generator=gen)
    kw = dict(reset=reset, mask=mask, inclusive=inclusive)
    wide = stdp_terms(pre, trace_sequential(pre, 0.8, **kw), post, trace_sequential(post, 0.6, **kw),
                      row_weight=w, mask=mask)
    got = narrow_stdp_terms(pre, post, decay_pre=0.8, decay_post=0.6, narrow=narrow, row_weight=w, **kw)
    for a, b in zip(got, wide):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_leaky_scan_matches_the_lif_recursion_and_its_adjoint():
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(2, 40, 5, generator=gen)
    decay = torch.tensor([0.9, 0.9, 0.5, 0.9, 0.5])
    reset = torch.rand(2, 40, generator=gen) > 0.8
    want = torch.zeros_like(u)
    v = torch.zeros(2, 5)
    for t in range(40):
        v = decay * v * (~reset[:, t:t + 1]).float() + u[:, t]
        want[:, t] = v
    torch.testing.assert_close(leaky_scan(u, decay, reset), want, rtol=1e-5, atol=1e-5)
    # adjoint: <leaky(u), c> == <u, leaky_reverse(c)>
    c = torch.randn(2, 40, 5, generator=gen)
    lhs = (leaky_scan(u, decay, reset) * c).sum()
    rhs = (u * leaky_scan(c, decay, reset, reverse=True)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_escape_scores_are_the_gradients_of_the_log_likelihood():
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.3
    theta = torch.tensor([0.1, 0.2, 0.15, 0.05], dtype=torch.float64)
    beta = 1.0 / (0.5 * theta)
    s_bin = (torch.rand(50, 4, generator=gen) > 0.5).double()
    vv, th = v.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    p = torch.sigmoid(beta * (vv - th))
    logp = (s_bin * torch.log(p) + (1 - s_bin) * torch.log1p(-p)).sum()
    gv, gt = torch.autograd.grad(logp, (vv, th))
    sv, st = escape_scores(v, s_bin, theta, beta, kind="heaviside")
    torch.testing.assert_close(sv, gv)
    torch.testing.assert_close(st.sum(0), gt)
    s_mt = torch.round(v / theta + torch.randn(50, 4, generator=gen, dtype=torch.float64)).clamp(-3, 3)
    vv, th = v.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    gv, gt = torch.autograd.grad(graded_escape_log_prob(vv, s_mt, th, beta, max_spikes=3).sum(), (vv, th))
    sv, st = escape_scores(v, s_mt, theta, beta, kind="mt", max_spikes=3)
    torch.testing.assert_close(sv, gv)
    torch.testing.assert_close(st.sum(0), gt)


def test_noise_input_lands_exactly_on_the_bottleneck():
    gen = torch.Generator().manual_seed(4)
    a1, a2 = torch.randn(8, 64, generator=gen), torch.randn(8, 96, generator=gen)
    eps = torch.randn(2, 10, 8, generator=gen)
    proj = noise_projections({"x": a1, "y": a2})
    for a, name in ((a1, "x"), (a2, "y")):
        torch.testing.assert_close((eps @ proj[name].float()) @ a.T, eps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(membrane_noise_input(eps, a) @ a.T, eps, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="full row rank"):
        noise_projections({"z": torch.zeros(2, 5)})


@pytest.mark.parametrize("name", ["narrow", "escape", "rewards", "baselines", "plasticity.targets"])
def test_docstring_examples(name):
    module = importlib.import_module(f"hybridtune.learners.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_chunked_traces_stay_exact_at_long_lengths():
    gen = torch.Generator().manual_seed(5)
    s = (torch.rand(1, 4096, 2, generator=gen) > 0.9).float()
    rev = reverse_trace(s, float(torch.exp(torch.tensor(-0.25))))
    fwd = trace_scan(s.flip(1), float(torch.exp(torch.tensor(-0.25)))).flip(1)  # no resets: reverse = flipped scan
    assert torch.isfinite(rev).all()
    torch.testing.assert_close(rev, fwd, rtol=1e-4, atol=1e-4)
