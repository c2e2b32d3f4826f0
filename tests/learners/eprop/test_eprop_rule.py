"""The e-prop rule against a naive per-token loop: forward eligibility traces, padding and document starts."""

from __future__ import annotations

import pytest
import torch

from hybridtune.learners.eprop.rule import eprop_factor_grads
from hybridtune.neurons.surrogates import get_surrogate


def naive(x, s, a, b, scaling, signal, neuron, theta, decay, reset, valid, surrogate, slope):
    """Token by token: membrane, pseudo-derivative ψ, trace x̄ with the neuron's leak, e = ψ x̄, ΔW = Σ L e."""
    bsz, steps, _ = x.shape
    r = a.shape[0]
    sg = get_surrogate(surrogate, slope)
    grad_a, grad_b = torch.zeros_like(a), torch.zeros_like(b)
    for i in range(bsz):
        v = torch.zeros(r)
        trace = torch.zeros(r, x.shape[-1])  # one presynaptic trace per (bottleneck neuron, input)
        for t in range(steps):
            keep = 0.0 if reset[i, t] else 1.0
            h = a @ x[i, t]
            if neuron == "lif":
                v = decay * v * keep + h
                psi = sg.grad(v - theta)
                trace = decay[:, None] * trace * keep + x[i, t][None, :]
                v = v - s[i, t] * theta  # soft reset with the recorded spikes
            elif neuron == "heaviside":
                psi = sg.grad(h - theta)
                trace = x[i, t][None, :].expand(r, -1)
            else:  # mt: dy/dh = ds/du (the nearest-crossing surrogate), y = s θ, u = h / θ
                u = h / theta
                crossing = torch.floor(u) + 0.5
                psi = sg.grad(u - crossing) * (crossing.abs() <= 4 - 0.5)  # saturated counts pass no error
                trace = x[i, t][None, :].expand(r, -1)
            if not valid[i, t]:
                continue
            y = s[i, t] * theta if neuron == "mt" else s[i, t]
            grad_b += scaling * torch.outer(signal[i, t], y)
            learning = scaling * (b.T @ signal[i, t])  # L^A = s Bᵀ L
            grad_a += (learning * psi)[:, None] * trace
    return grad_a, grad_b


@pytest.mark.parametrize("neuron", ["lif", "heaviside", "mt"])
def test_eprop_matches_a_per_token_loop_with_padding_and_document_starts(neuron):
    gen = torch.Generator().manual_seed(3)
    bsz, steps, d_in, r, d_out = 3, 11, 6, 4, 5
    x = torch.rand(bsz, steps, d_in, generator=gen)
    a = torch.randn(r, d_in, generator=gen) * 0.5
    b = torch.randn(d_out, r, generator=gen)
    theta = torch.tensor([0.2, 0.3, 0.25, 0.4])
    decay = torch.tensor([0.9, 0.5, 0.8, 0.7]) if neuron == "lif" else torch.zeros(r)
    valid = torch.ones(bsz, steps, dtype=torch.bool)
    valid[0, :3] = False  # left padding
    valid[2, -2:] = False  # right padding
    reset = torch.zeros(bsz, steps, dtype=torch.bool)
    reset[:, 0] = True
    reset[1, 5] = True  # a document starts inside row 1
    reset |= ~valid | torch.nn.functional.pad(~valid, (1, 0))[:, :-1]  # as the sequence hook builds it
    # spikes from the real neuron (the rule reads recorded spikes)
    h = x @ a.T
    if neuron == "lif":
        from hybridtune.ops.scan import lif_scan

        s, _ = lif_scan(h, theta, decay, reset, None)
    elif neuron == "heaviside":
        s = (h > theta).float()
    else:
        s = torch.round(h / theta).clamp(-4, 4)
    signal = torch.randn(bsz, steps, d_out, generator=gen)
    signal_padded = signal.clone()
    signal_padded[~valid] = 100.0  # the rule must ignore whatever sits at padding
    got = eprop_factor_grads(x, s, a, b, 0.5, signal_padded, neuron, theta, decay, reset, valid,
                             4 if neuron == "mt" else 0, "atan", 2.0)
    want_a, want_b = naive(x, s, a, b, 0.5, signal, neuron, theta, decay, reset, valid, "atan", 2.0)
    torch.testing.assert_close(got["B"], want_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["A"], want_a, rtol=1e-4, atol=1e-5)
    assert want_a.abs().sum() > 0


def test_padding_and_document_starts_change_the_lif_update():
    """The negative control: without the restarts the loop (and the rule) give a different ΔA."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 8, 3, generator=gen)
    a, b = torch.randn(2, 3, generator=gen), torch.randn(4, 2, generator=gen)
    theta, decay = torch.tensor([0.2, 0.3]), torch.tensor([0.9, 0.9])
    s = torch.zeros(1, 8, 2)
    signal = torch.randn(1, 8, 4, generator=gen)
    reset = torch.zeros(1, 8, dtype=torch.bool)
    reset[0, 4] = True
    kw = dict(valid=None, max_spikes=0, surrogate="atan", slope=2.0)
    with_reset = eprop_factor_grads(x, s, a, b, 1.0, signal, "lif", theta, decay, reset, **kw)
    without = eprop_factor_grads(x, s, a, b, 1.0, signal, "lif", theta, decay, None, **kw)
    assert not torch.allclose(with_reset["A"], without["A"])
