"""The antithetic node-perturbation estimator: unbiased on a toy quadratic, credit only to earlier nodes."""

from __future__ import annotations

import torch

from hybridtune.learners.plasticity.perturbation import antithetic_credit, node_noise


def token_losses(u: torch.Tensor, m: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ[t] = ½‖M u[t] − y[t]‖² + 2 ‖u[t−1]‖²: each token's loss also depends on the previous token's nodes."""
    own = 0.5 * ((u @ m.T - target) ** 2).sum(-1)
    prev = 2.0 * (torch.nn.functional.pad(u, (0, 0, 1, 0))[..., :-1, :] ** 2).sum(-1)
    return own + prev


def test_antithetic_estimator_is_unbiased_on_a_quadratic():
    gen = torch.Generator().manual_seed(0)
    steps, units, draws, sigma = 6, 5, 20000, 0.1
    u = torch.randn(steps, units, generator=gen, dtype=torch.float64)
    m = torch.randn(3, units, generator=gen, dtype=torch.float64)
    target = torch.randn(steps, 3, generator=gen, dtype=torch.float64)
    uu = u.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(token_losses(uu, m, target).sum(), uu)
    xi = node_noise((draws, steps, units), seed=3, layer="toy", node="h", pair=0).double()
    plus, minus = token_losses(u + sigma * xi, m, target), token_losses(u - sigma * xi, m, target)
    estimate = antithetic_credit(plus, minus, sigma, gamma=1.0)[..., None] * xi  # [draws, L, n]
    mean = estimate.mean(0)
    stderr = estimate.std(0) / draws ** 0.5
    assert float(((mean - true).abs() / stderr).max()) < 4.5  # within the Monte Carlo error everywhere
    assert float(torch.nn.functional.cosine_similarity(mean.flatten(), true.flatten(), 0)) > 0.99
    # same-token credit (γ = 0) misses the dependence of ℓ[t] on u[t-1]: biased
    local = (antithetic_credit(plus, minus, sigma, gamma=0.0)[..., None] * xi).mean(0)
    assert float((local - true).abs().max()) > 8 * float(stderr.max())


def test_noise_is_a_pure_function_of_its_key():
    a = node_noise((2, 3), seed=1, layer="l", node="h", pair=0)
    assert torch.equal(a, node_noise((2, 3), seed=1, layer="l", node="h", pair=0))
    for other in (dict(seed=2, layer="l", node="h", pair=0), dict(seed=1, layer="m", node="h", pair=0),
                  dict(seed=1, layer="l", node="o", pair=0), dict(seed=1, layer="l", node="h", pair=1)):
        assert not torch.equal(a, node_noise((2, 3), **other))


def test_credit_stops_at_document_starts_and_skips_padding():
    plus, minus = torch.tensor([[1.0, 2.0, 4.0, 8.0]]), torch.zeros(1, 4)
    reset = torch.tensor([[True, False, True, False]])
    assert antithetic_credit(plus, minus, 0.5, 1.0, reset=reset).tolist() == [[3.0, 2.0, 12.0, 8.0]]
    mask = torch.tensor([[True, False, True, True]])
    # the padded position is no time step: credit passes through it without an extra discount step
    want = [[1.0 + 0.5 * 4 + 0.25 * 8, 0.5 * 4 + 0.25 * 8, 4.0 + 0.5 * 8, 8.0]]
    assert antithetic_credit(plus, minus, 0.5, 0.5, mask=mask).tolist() == want
