"""R-STDP: row-weighted GEMMs against explicit per-sample eligibility, baselines, escape-noise policy gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from hybridtune.learners.plasticity import (
    dense_reward_weights,
    ema_baseline,
    escape_probability,
    group_mean_baseline,
    policy_gradient_update,
    rstdp_update,
    sample_escape_spikes,
    sequence_reward_weights,
)


def test_golden_weights_three_tokens():
    # per-sequence: (R - b) γ^(L-1-t) = 2 * [0.25, 0.5, 1]
    assert sequence_reward_weights(torch.tensor([3.0]), 3, 0.5, baseline=1.0).tolist() == [[0.5, 1.0, 2.0]]
    # dense: w[k] = Σ_{t>=k} γ^(t-k) r[t] for r = [1, 0, 2]
    assert dense_reward_weights(torch.tensor([[1.0, 0.0, 2.0]]), 0.5).tolist() == [[1.5, 1.0, 2.0]]
    # a document start at t = 2 cuts the credit; padding at t = 1 neither pays nor discounts
    assert dense_reward_weights(
        torch.tensor([[1.0, 0.0, 2.0]]), 0.5, reset=torch.tensor([[True, False, True]])
    ).tolist() == [[1.0, 0.0, 2.0]]
    assert dense_reward_weights(
        torch.tensor([[1.0, 5.0, 2.0]]), 0.5, mask=torch.tensor([[True, False, True]])
    ).tolist() == [[2.0, 0.0, 2.0]]
    assert sequence_reward_weights(
        torch.tensor([2.0]), 3, 0.5, reset=torch.tensor([[False, True, False]])
    ).tolist() == [[0.0, 1.0, 2.0]]


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("flags", ["none", "mask", "reset", "both"])
@pytest.mark.parametrize("reset_eligibility", [True, False])
def test_sequence_reward_equals_explicit_eligibility(ref, inclusive, flags, reset_eligibility):
    bsz, length = 3, 19
    s_pre, s_post = ref.random_spikes((bsz, length, 4), seed=1), ref.random_spikes((bsz, length, 3), seed=2)
    reset = ref.random_flags((bsz, length), 0.12, seed=3) if flags in ("reset", "both") else None
    mask = ref.random_flags((bsz, length), 0.8, seed=4) if flags in ("mask", "both") else None
    reward = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
    baseline = torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)
    gamma = 0.9
    elig = ref.eligibility_loop(
        s_pre,
        s_post,
        0.7,
        0.6,
        gamma,
        a_plus=1.1,
        a_minus=0.8,
        reset=reset,
        mask=mask,
        inclusive=inclusive,
        reset_eligibility=reset_eligibility,
    )
    want = ((reward - baseline)[:, None, None] * elig[:, -1]).mean(0)
    got = rstdp_update(
        s_pre,
        s_post,
        reward,
        baseline=baseline,
        gamma=gamma,
        decay_pre=0.7,
        decay_post=0.6,
        a_plus=1.1,
        a_minus=0.8,
        inclusive=inclusive,
        reset=reset,
        mask=mask,
        reset_eligibility=reset_eligibility,
        chunk=4,
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flags", ["none", "mask", "reset", "both"])
def test_dense_reward_equals_explicit_eligibility(ref, flags):
    bsz, length = 2, 21
    s_pre, s_post = ref.random_spikes((bsz, length, 4), seed=5), ref.random_spikes((bsz, length, 3), seed=6)
    reset = ref.random_flags((bsz, length), 0.12, seed=7) if flags in ("reset", "both") else None
    mask = ref.random_flags((bsz, length), 0.8, seed=8) if flags in ("mask", "both") else None
    reward = torch.randn(bsz, length, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    gamma, baseline = 0.8, 0.3
    elig = ref.eligibility_loop(s_pre, s_post, 0.5, 0.7, gamma, a_minus=0.9, reset=reset, mask=mask)
    keep = torch.ones(bsz, length, dtype=torch.bool) if mask is None else mask
    want = (((reward - baseline) * keep)[:, :, None, None] * elig).sum(1).mean(0)
    got = rstdp_update(
        s_pre,
        s_post,
        reward,
        baseline=baseline,
        gamma=gamma,
        decay_pre=0.5,
        decay_post=0.7,
        a_minus=0.9,
        reset=reset,
        mask=mask,
        chunk=5,
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_dense_weights_equal_loop_long_float32(ref):
    r = torch.randn(2, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    mask = ref.random_flags((2, 4096), 0.95, seed=11)
    reset = ref.random_flags((2, 4096), 0.002, seed=12)
    gamma32 = float(torch.tensor(0.99, dtype=torch.float32))
    want = ref.reverse_discount_loop(r - 0.1, gamma32, reset, mask) * mask
    got = dense_reward_weights(r.float(), 0.99, baseline=0.1, mask=mask, reset=reset)
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() <= 2e-6 * want.abs().max()


def test_ema_baseline():
    b = ema_baseline(None, torch.tensor([1.0, 3.0]))
    assert b.item() == 2.0 and b.dim() == 0
    b = ema_baseline(b, torch.tensor([6.0]), momentum=0.75)
    assert b.item() == 3.0
    masked = ema_baseline(
        None, torch.tensor([[1.0, 100.0], [3.0, 5.0]]), mask=torch.tensor([[True, False], [True, True]])
    )
    assert masked.item() == 3.0
    with pytest.raises(ValueError, match="momentum"):
        ema_baseline(b, torch.ones(2), momentum=1.0)


def test_group_mean_baseline():
    reward = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0, 7.0])
    groups = torch.tensor([4, 9, 4, 9, 4, 2])
    assert group_mean_baseline(reward, groups).tolist() == [3.0, 15.0, 3.0, 15.0, 3.0, 7.0]
    assert group_mean_baseline(reward, groups, leave_one_out=True).tolist() == [4.0, 20.0, 3.0, 10.0, 2.0, 7.0]
    with pytest.raises(ValueError, match="groups"):
        group_mean_baseline(reward, groups[:3])


def _exact_policy_case(seed=0, length=2, n_in=3, n_out=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(length, n_in, dtype=torch.float64, generator=g)
    w = torch.randn(n_out, n_in, dtype=torch.float64, generator=g)
    theta = torch.randn(n_out, dtype=torch.float64, generator=g) * 0.3
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=length * n_out)), dtype=torch.float64)
    configs = configs.reshape(-1, length, n_out)
    rewards = torch.randn(len(configs), dtype=torch.float64, generator=g)
    return x, w, theta, configs, rewards


def _log_prob(s, p):
    return (s * p.log() + (1 - s) * (1 - p).log()).sum()


@pytest.mark.parametrize("baseline", [0.0, 0.7])
def test_escape_noise_rule_is_reinforce_in_expectation(baseline):
    beta = 1.5
    x, w, theta, configs, rewards = _exact_policy_case()
    # exact ∇_W E[R] by autograd over all 2^(L*out) spike patterns
    w_var = w.clone().requires_grad_()
    p_var = escape_probability(x @ w_var.T, theta, beta)
    expected_reward = sum(_log_prob(s, p_var).exp() * r for s, r in zip(configs, rewards))
    (exact,) = torch.autograd.grad(expected_reward, w_var)
    # expectation of the three-factor estimator: Σ_s π(s) * ΔW(s)
    p = escape_probability(x @ w.T, theta, beta)
    estimate = torch.zeros_like(w)
    biased = torch.zeros_like(w)
    for s, r in zip(configs, rewards):
        prob = _log_prob(s, p).exp()
        row = sequence_reward_weights(r.reshape(1), x.shape[0], 1.0, baseline=baseline)
        estimate += prob * policy_gradient_update(x[None], s[None], p[None], row, beta=beta)
        row_discounted = sequence_reward_weights(r.reshape(1), x.shape[0], 0.5, baseline=baseline)
        biased += prob * policy_gradient_update(x[None], s[None], p[None], row_discounted, beta=beta)
    torch.testing.assert_close(estimate, exact, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(biased, exact, atol=1e-3)  # γ < 1 discounts credit: not REINFORCE any more


def test_sampled_estimate_converges_to_reinforce():
    beta, n = 1.5, 20000
    x, w, theta, configs, rewards = _exact_policy_case(seed=1)
    w_var = w.clone().requires_grad_()
    p_var = escape_probability(x @ w_var.T, theta, beta)
    (exact,) = torch.autograd.grad(sum(_log_prob(s, p_var).exp() * r for s, r in zip(configs, rewards)), w_var)

    v = (x @ w.T).expand(n, -1, -1)
    s, p = sample_escape_spikes(v, theta, beta, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(s.mean(0), p[0], atol=0.02, rtol=0)
    index = (s.reshape(n, -1) * 2 ** torch.arange(s[0].numel() - 1, -1, -1, dtype=torch.float64)).sum(1).long()
    reward = rewards[index]
    baseline = group_mean_baseline(reward, torch.zeros(n, dtype=torch.long), leave_one_out=True)
    row = sequence_reward_weights(reward, x.shape[0], 1.0, baseline=baseline)
    got = policy_gradient_update(x.expand(n, -1, -1), s, p, row, beta=beta)
    # tolerance from the per-sample spread of the estimator (tests only: [n, out, in])
    per_sample = torch.einsum("bt,bto,bti->boi", row, beta * (s - p), x.expand(n, -1, -1))
    stderr = per_sample.std(0) / n**0.5
    assert ((got - exact).abs() <= 5 * stderr + 1e-9).all()


def test_escape_probability_limits_and_errors():
    v = torch.tensor([-1.0, 1.0])
    assert escape_probability(v, 0.0, 200.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="beta"):
        escape_probability(v, 0.0, 0.0)
    with pytest.raises(ValueError, match="p_post"):
        policy_gradient_update(
            torch.ones(1, 2, 3), torch.ones(1, 2, 1), torch.ones(1, 2, 2), torch.ones(1, 2), beta=1.0
        )


def test_reward_shape_is_checked():
    s = torch.ones(2, 5, 3)
    with pytest.raises(ValueError, match="reward must be per sequence"):
        rstdp_update(s, s, torch.ones(3), gamma=0.9, decay_pre=0.5, decay_post=0.5)
