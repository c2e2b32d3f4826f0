"""Weight dependence, Oja normalisation and update-norm clipping."""

from __future__ import annotations

import pytest
import torch

from hybridtune.learners.plasticity import (
    additive_delta,
    clip_update_norm,
    hard_bound,
    hard_bound_delta,
    oja_delta,
    soft_bound_delta,
    stdp_terms,
    trace_scan,
)


@pytest.fixture(scope="module")
def step_terms():
    """(LTP, LTD) of 300 random batches of non-negative spikes (2 x 16 tokens, 6 -> 4), computed once."""
    g = torch.Generator().manual_seed(0)
    s_pre = (torch.rand(300, 2, 16, 6, generator=g) < 0.3).double()
    s_post = (torch.rand(300, 2, 16, 4, generator=g) < 0.3).double()
    x_pre, x_post = trace_scan(s_pre, 0.8), trace_scan(s_post, 0.8)
    return [stdp_terms(s_pre[i], x_pre[i], s_post[i], x_post[i]) for i in range(300)]


@pytest.mark.parametrize("a_plus,a_minus", [(0.03, 0.02), (0.055, 0.001), (0.001, 0.055)])
def test_soft_bounds_keep_weights_in_range_over_many_steps(step_terms, a_plus, a_minus):
    w_min, w_max = -1.0, 1.0
    w = torch.empty(4, 6, dtype=torch.float64).uniform_(-0.9, 0.9, generator=torch.Generator().manual_seed(0))
    w_add = w.clone()
    for step, (ltp, ltd) in enumerate(step_terms):
        # the documented sufficient condition for one step to stay in range (some steps come close to it)
        assert a_plus * ltp.max() <= 1 and a_minus * ltd.max() <= 1
        w = w + soft_bound_delta(w, ltp, ltd, a_plus=a_plus, a_minus=a_minus, w_min=w_min, w_max=w_max)
        w_add = w_add + additive_delta(ltp, ltd, a_plus=a_plus, a_minus=a_minus)
        assert w.min() >= w_min and w.max() <= w_max, step
    assert w_add.abs().max() > w_max  # the same updates without weight dependence leave the range
    if a_plus > 10 * a_minus:  # potentiation-dominated: pressed against the upper bound, never through it
        assert w.min() > 0.9
    if a_minus > 10 * a_plus:
        assert w.max() < -0.9


def test_soft_bound_edges_and_mu():
    ltp, ltd = torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 1.0])
    w = torch.tensor([0.0, 0.25, 1.0])
    delta = soft_bound_delta(w, ltp, ltd, a_plus=1.0, a_minus=1.0, w_min=0.0, w_max=1.0)
    # at w_min only potentiation, at w_max only depression; inside (w_max - w) * 2 - (w - w_min) * 1
    assert delta.tolist() == [2.0, 1.25, -1.0]
    sq = soft_bound_delta(w, ltp, ltd, a_plus=1.0, a_minus=1.0, w_min=0.0, w_max=1.0, mu=2.0)
    assert sq.tolist() == [2.0, 2 * 0.75**2 - 0.25**2, -1.0]
    inside = torch.tensor([0.5])
    torch.testing.assert_close(
        soft_bound_delta(inside, ltp[:1], ltd[:1], a_plus=0.3, a_minus=0.2, w_min=0.0, w_max=1.0, mu=0.0),
        additive_delta(ltp[:1], ltd[:1], a_plus=0.3, a_minus=0.2),
    )


def test_hard_bounds():
    w = torch.tensor([-0.5, 0.0, 0.9])
    delta = torch.tensor([-1.0, 0.5, 0.5])
    assert (w + hard_bound_delta(w, delta, -1.0, 1.0)).tolist() == [-1.0, 0.5, 1.0]
    assert hard_bound(w + delta, -1.0, 1.0).tolist() == [-1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="w_min must be < w_max"):
        hard_bound(w, 1.0, 1.0)
    with pytest.raises(ValueError, match="w_min"):
        soft_bound_delta(w, w, w, a_plus=1.0, a_minus=1.0, w_min=2.0, w_max=1.0)


def test_oja_term_equals_explicit_sum(ref):
    w = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = ref.random_spikes((3, 10, 4), graded=True, seed=2)
    mask = ref.random_flags((3, 10), 0.7, seed=3)
    want = torch.zeros_like(w)
    for b in range(3):
        for t in range(10):
            if mask[b, t]:
                want -= (y[b, t] ** 2)[:, None] * w
    torch.testing.assert_close(oja_delta(w, y, mask=mask), want / 3)
    with pytest.raises(ValueError, match="w must be"):
        oja_delta(torch.ones(5, 6), y)


def test_oja_rule_normalises_and_finds_the_principal_direction():
    # Oja: Δw = η (y x - y² w) with y = w·x converges to the unit-norm top eigenvector of E[x xᵀ].
    g = torch.Generator().manual_seed(4)
    scales = torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    w = torch.randn(1, 4, dtype=torch.float64, generator=g) * 0.1
    for _ in range(600):
        x = torch.randn(1, 32, 4, dtype=torch.float64, generator=g) * scales
        y = x @ w.T
        hebb, _ = stdp_terms(x, x, y, y)  # λ = 0 traces: LTP = Σ_t y[t] ⊗ x[t]
        w = w + 0.002 * (hebb + oja_delta(w, y))
    assert w.norm().item() == pytest.approx(1.0, abs=0.05)
    assert abs(w[0, 0].item()) > 0.99


def test_clip_update_norm():
    d = torch.tensor([3.0, 4.0])
    clipped, norm = clip_update_norm(d, 10.0)
    assert norm.item() == 5.0 and torch.equal(clipped, d)
    parts, norm = clip_update_norm([torch.tensor([3.0]), torch.tensor([[4.0]])], 1.0)
    assert norm.item() == 5.0
    torch.testing.assert_close(torch.cat([parts[0], parts[1].flatten()]), torch.tensor([0.6, 0.8]))
    assert parts[1].shape == (1, 1)
    with pytest.raises(ValueError, match="max_norm"):
        clip_update_norm(d, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        clip_update_norm([], 1.0)
