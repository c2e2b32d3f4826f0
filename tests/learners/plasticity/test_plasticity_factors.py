"""LoRA factor rules: the projected update equals the chain rule of the explicit full-rank update."""

from __future__ import annotations

import pytest
import torch

from hybridtune.learners.plasticity import local_factor_updates, projected_factor_grads, trace_scan


def _factors(n_in, n_out, rank, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rank, n_in, generator=g, dtype=torch.float64),
        torch.randn(n_out, rank, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_projection_equals_chain_rule_of_full_rank_update(ref, inclusive, weighted):
    s_pre, s_post = ref.random_spikes((3, 17, 6), seed=1), ref.random_spikes((3, 17, 5), seed=2)
    reset, mask = ref.random_flags((3, 17), 0.1, seed=3), ref.random_flags((3, 17), 0.85, seed=4)
    w = torch.randn(3, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) if weighted else None
    lora_a, lora_b = _factors(6, 5, 2, seed=6)
    scaling = 0.75
    # explicit full-rank update from the per-step outer-product loop, G = -ΔW
    delta = ref.stdp_loop(
        s_pre, s_post, 0.6, 0.7, a_plus=1.2, a_minus=0.9, reset=reset, mask=mask, inclusive=inclusive, row_weight=w
    )
    grad = -delta
    x_pre = trace_scan(s_pre, 0.6, reset=reset, mask=mask, inclusive=inclusive)
    x_post = trace_scan(s_post, 0.7, reset=reset, mask=mask, inclusive=inclusive)
    grad_a, grad_b = projected_factor_grads(
        s_pre, x_pre, s_post, x_post, lora_a, lora_b, scaling=scaling, a_plus=1.2, a_minus=0.9, row_weight=w, mask=mask
    )
    torch.testing.assert_close(grad_a, scaling * lora_b.T @ grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_b, scaling * grad @ lora_a.T, rtol=1e-12, atol=1e-12)


def test_projection_is_the_autograd_gradient_of_the_pseudo_objective(ref):
    # If G = -ΔW is the gradient w.r.t. W_eff = W0 + s B A, autograd of <G, W_eff> gives the factor gradients.
    s_pre, s_post = ref.random_spikes((2, 11, 4), seed=7), ref.random_spikes((2, 11, 3), seed=8)
    lora_a, lora_b = _factors(4, 3, 2, seed=9)
    x_pre, x_post = trace_scan(s_pre, 0.5), trace_scan(s_post, 0.5)
    grad = -ref.stdp_loop(s_pre, s_post, 0.5, 0.5)
    a, b = lora_a.clone().requires_grad_(), lora_b.clone().requires_grad_()
    (grad * (2.0 * b @ a)).sum().backward()
    grad_a, grad_b = projected_factor_grads(s_pre, x_pre, s_post, x_post, lora_a, lora_b, scaling=2.0)
    torch.testing.assert_close(grad_a, a.grad)
    torch.testing.assert_close(grad_b, b.grad)


def test_zero_b_gives_zero_grad_a(ref):
    s_pre, s_post = ref.random_spikes((2, 9, 4), seed=10), ref.random_spikes((2, 9, 3), seed=11)
    lora_a, _ = _factors(4, 3, 2, seed=12)
    x_pre, x_post = trace_scan(s_pre, 0.5), trace_scan(s_post, 0.5)
    grad_a, grad_b = projected_factor_grads(
        s_pre, x_pre, s_post, x_post, lora_a, torch.zeros(3, 2, dtype=torch.float64), scaling=1.0
    )
    assert torch.count_nonzero(grad_a) == 0 and torch.count_nonzero(grad_b) > 0


@pytest.mark.parametrize("inclusive", [True, False])
def test_local_bottleneck_rule_equals_loop(ref, inclusive):
    s_in = ref.random_spikes((2, 13, 6), seed=13)
    s_h = ref.random_spikes((2, 13, 3), seed=14)
    s_out = ref.random_spikes((2, 13, 5), seed=15)
    reset = ref.random_flags((2, 13), 0.1, seed=16)
    kw = dict(a_plus=1.0, a_minus=0.8, reset=reset, inclusive=inclusive)
    d_a, d_b = local_factor_updates(s_in, s_h, s_out, decay_pre=0.7, decay_post=0.5, **kw)
    assert d_a.shape == (3, 6) and d_b.shape == (5, 3)
    torch.testing.assert_close(d_a, ref.stdp_loop(s_in, s_h, 0.7, 0.5, **kw), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_b, ref.stdp_loop(s_h, s_out, 0.7, 0.5, **kw), rtol=1e-12, atol=1e-12)
    d_a_only, none = local_factor_updates(s_in, s_h, decay_pre=0.7, decay_post=0.5, **kw)
    assert none is None
    torch.testing.assert_close(d_a_only, d_a)


def test_factor_shapes_are_checked():
    s = torch.ones(1, 4, 3)
    with pytest.raises(ValueError, match="lora_A must be"):
        projected_factor_grads(s, s, s, s, torch.ones(2, 4), torch.ones(3, 2), scaling=1.0)
    with pytest.raises(ValueError, match="lora_B"):
        projected_factor_grads(s, s, s, s, torch.ones(2, 3), torch.ones(3, 5), scaling=1.0)
