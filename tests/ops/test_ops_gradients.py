"""Surrogate backward of the op: finite differences of each surrogate's smooth form, and BPTT against autograd of
an independent token loop whose spike function has the same surrogate backward."""

from __future__ import annotations

import pytest
import torch

from hybridtune.neurons.surrogates import get_surrogate
from hybridtune.ops import spike_lora

SMOOTH = [("atan", 2.0), ("fast_sigmoid", 5.0), ("sigmoid", 4.0)]
F64 = torch.float64


def _identity_case(h: torch.Tensor):
    """Op inputs whose bottleneck input equals ``h`` (A = I) and whose output ignores the base (W = 0)."""
    rank = h.shape[-1]
    eye = torch.eye(rank, dtype=F64)
    return h.clone().requires_grad_(True), torch.zeros(rank, rank, dtype=F64), eye, eye


def _fd(fn, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = x.detach().reshape(-1)
    for i in range(flat.numel()):
        hi, lo = flat.clone(), flat.clone()
        hi[i] += eps
        lo[i] -= eps
        grad.view(-1)[i] = (fn(hi.view_as(x)) - fn(lo.view_as(x))) / (2 * eps)
    return grad


@pytest.mark.parametrize("name,slope", SMOOTH)
@pytest.mark.parametrize("neuron", ["heaviside", "lif"])
def test_single_step_spike_gradient_is_smooth_derivative(name, slope, neuron):
    # T = 1: heaviside and lif both spike on h - theta; dS/dh and dS/dtheta are derivatives of the smooth form
    sg = get_surrogate(name, slope)
    h = torch.tensor([[[0.3, -0.2, 0.55, 1.4]]], dtype=F64)
    theta = torch.tensor([0.5, 0.1, 0.5, 1.0], dtype=F64, requires_grad=True)
    x, weight, lora_a, lora_b = _identity_case(h)
    _, spikes, _ = spike_lora(x, weight, None, lora_a, lora_b, 1.0, neuron, theta, torch.zeros(4, dtype=F64), None,
                              None, 0, name, slope)
    gx, gth = torch.autograd.grad(spikes.sum(), [x, theta])
    torch.testing.assert_close(gx, _fd(lambda v: sg.smooth(v - theta.detach()).sum(), h))
    torch.testing.assert_close(gth, _fd(lambda t: sg.smooth(h - t).sum(), theta.detach()))


@pytest.mark.parametrize("name,slope", SMOOTH)
def test_mt_gradient_is_smooth_derivative_at_nearest_crossing(name, slope):
    sg = get_surrogate(name, slope)
    theta = torch.tensor([0.5, 0.5, 0.25, 0.25, 1.0], dtype=F64)
    # u = h / theta = 0.6, -1.3, 2.2, 4.7 (saturated: cap 3), -0.1
    h = torch.tensor([[[0.3, -0.65, 0.55, 1.175, -0.1]]], dtype=F64)
    x, weight, lora_a, lora_b = _identity_case(h)
    _, spikes, _ = spike_lora(x, weight, None, lora_a, lora_b, 1.0, "mt", theta, torch.zeros(5, dtype=F64), None,
                              None, 3, name, slope)
    (gx,) = torch.autograd.grad(spikes.sum(), [x])
    u = h / theta
    crossing = torch.floor(u) + 0.5  # held fixed: the smooth step nearest to u
    expected = _fd(lambda v: sg.smooth(v / theta - crossing).sum(), h)
    expected[..., 3] = 0.0  # |crossing| = 4.5 > cap - 1/2: saturated, no gradient
    torch.testing.assert_close(gx, expected)


def test_mt_straight_through_is_lsq():
    # surrogate = straight_through: dy/dh = 1 inside the range, dy/dtheta = round(u) - u (the LSQ step gradient)
    h = torch.tensor([[[0.3, -0.65, 0.55, 2.0]]], dtype=F64)
    theta = torch.tensor([0.25, 0.5, 0.25, 0.25], dtype=F64, requires_grad=True)
    x, weight, lora_a, lora_b = _identity_case(h)
    out, _, _ = spike_lora(x, weight, None, lora_a, lora_b, 1.0, "mt", theta, torch.zeros(4, dtype=F64), None, None,
                           4, "straight_through", 1.0)
    gx, gth = torch.autograd.grad(out.sum(), [x, theta])
    u = (h / theta).detach().flatten()
    assert gx.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]  # u = 8 is beyond the cap of 4
    torch.testing.assert_close(gth[:3], (torch.round(u) - u)[:3])


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, name, slope):
        ctx.save_for_backward(z)
        ctx.sg = get_surrogate(name, slope)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * ctx.sg.grad(z), None, None


class _Stair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, cap, name, slope):
        ctx.save_for_backward(u)
        ctx.cap, ctx.sg = cap, get_surrogate(name, slope)
        s = torch.round(u)
        return s.clamp(-cap, cap) if cap > 0 else s

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        crossing = torch.floor(u) + 0.5
        d = ctx.sg.grad(u - crossing)
        if ctx.cap > 0:
            d = d * (crossing.abs() <= ctx.cap - 0.5)
        return grad * d, None, None, None


def autograd_reference(x, weight, bias, lora_a, lora_b, scaling, neuron, theta, decay, reset, state, cap, name,
                       slope):
    h = x @ lora_a.t()
    final = torch.zeros(x.shape[0], lora_a.shape[0], dtype=x.dtype)
    if neuron == "heaviside":
        s = _Spike.apply(h - theta, name, slope)
        y = s
    elif neuron == "mt":
        s = _Stair.apply(h / theta, cap, name, slope)
        y = s * theta
    else:
        v = torch.zeros_like(final) if state is None else state
        steps = []
        for t in range(x.shape[1]):
            keep = 1.0 if reset is None else (~reset[:, t]).to(x.dtype)[:, None]
            v = decay * v * keep + h[:, t]
            s_t = _Spike.apply(v - theta, name, slope)
            v = v - s_t.detach() * theta  # soft reset, detached from the spike (as in snnTorch)
            steps.append(s_t)
        s, y, final = torch.stack(steps, 1), torch.stack(steps, 1), v
    return x @ weight.t() + bias + scaling * y @ lora_b.t(), s, final


@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
@pytest.mark.parametrize("name", ["atan", "fast_sigmoid", "straight_through"])
@pytest.mark.parametrize("steps", [7, 130])  # 130 > one scan chunk
def test_backward_matches_autograd_of_token_loop(neuron, name, steps):
    g = torch.Generator().manual_seed(11)
    bsz, d_in, d_out, rank = 2, 5, 4, 3

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale + shift).requires_grad_(True)

    x, weight, bias = leaf(bsz, steps, d_in), leaf(d_out, d_in), leaf(d_out)
    lora_a, lora_b = leaf(rank, d_in), leaf(d_out, rank)
    theta = (torch.rand(rank, generator=g, dtype=F64) + 0.3).requires_grad_(True)
    decay = torch.rand(rank, generator=g, dtype=F64).requires_grad_(True)
    reset = torch.rand(bsz, steps, generator=g) < 0.2
    state = leaf(bsz, rank)
    args = (x, weight, bias, lora_a, lora_b, 1.7, neuron, theta, decay, reset, state, 2, name, 3.0)
    got = spike_lora(*args)
    want = autograd_reference(*args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    weights = [torch.randn(t.shape, generator=g, dtype=F64) for t in got]
    inputs = [x, weight, bias, lora_a, lora_b, theta, decay, state]
    g_got = torch.autograd.grad(sum((t * w).sum() for t, w in zip(got, weights)), inputs, allow_unused=True)
    g_want = torch.autograd.grad(sum((t * w).sum() for t, w in zip(want, weights)), inputs, allow_unused=True)
    for label, a, b in zip("x weight bias A B theta decay state".split(), g_got, g_want):
        a = torch.zeros_like(inputs[0]) if a is None and b is None else a
        if b is None:
            b = torch.zeros_like(a)
        torch.testing.assert_close(a, b, msg=lambda m, label=label: f"grad {label}: {m}")


def test_frozen_base_gets_no_gradient():
    x = torch.randn(1, 3, 4, requires_grad=True)
    weight = torch.randn(2, 4)  # frozen, like every base weight
    lora_a = torch.randn(2, 4, requires_grad=True)
    out, _, _ = spike_lora(x, weight, None, lora_a, torch.randn(2, 2, requires_grad=True), 1.0, "mt",
                           torch.ones(2), torch.ones(2), None, None, 0, "atan", 2.0)
    out.sum().backward()
    assert weight.grad is None and x.grad is not None and lora_a.grad is not None
