"""The reference op's forward against hand-computed values and an independent per-token loop."""

from __future__ import annotations

import pytest
import torch

from hybridtune.ops import bottleneck_forward, lif_scan, linear_scan, reverse_linear_scan, spike_lora
from hybridtune.ops.scan import lif_scan_numpy, lif_scan_torch, linear_scan_chunked, linear_scan_numpy


def naive_bottleneck(h, neuron, theta, decay, reset, state, cap):
    """Token-by-token, neuron-by-neuron Python loop: the definition, written independently of the op."""
    bsz, steps, rank = h.shape
    spikes = torch.zeros_like(h)
    y = torch.zeros_like(h)
    final = torch.zeros(bsz, rank, dtype=h.dtype)
    for b in range(bsz):
        for j in range(rank):
            v = 0.0 if state is None else float(state[b, j])
            for t in range(steps):
                hv, th = float(h[b, t, j]), float(theta[j])
                if neuron == "heaviside":
                    s = 1.0 if hv > th else 0.0
                    spikes[b, t, j], y[b, t, j] = s, s
                elif neuron == "mt":
                    s = float(torch.round(torch.tensor(hv / th, dtype=torch.float64)))
                    s = max(-cap, min(cap, s)) if cap > 0 else s
                    spikes[b, t, j], y[b, t, j] = s, s * th
                else:
                    keep = 0.0 if (reset is not None and bool(reset[b, t])) else 1.0
                    v = float(decay[j]) * v * keep + hv
                    s = 1.0 if v > th else 0.0
                    v -= s * th
                    spikes[b, t, j], y[b, t, j] = s, s
            final[b, j] = v if neuron == "lif" else 0.0
    return y, spikes, final


def test_lif_hand_computed():
    # theta 1, decay 1/2 (exact binary fractions): v = .75 | .375+.75=1.125 -> spike, .125 | .0625+.5 | .28125+1
    h = torch.tensor([[[0.75], [0.75], [0.5], [1.0]]], dtype=torch.float64)
    spikes, v = lif_scan(h, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                         None, None)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert v.item() == 0.28125
    # a reset at t=1 forgets the first token: .75 | .375+.5=.875 | .4375+1=1.4375 -> spike, .4375
    reset = torch.tensor([[False, True, False, False]])
    spikes, v = lif_scan(h, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                         reset, None)
    assert spikes.flatten().tolist() == [0.0, 0.0, 0.0, 1.0]
    assert v.item() == 0.4375
    # a carried state of .5: .25+.75 = 1.0 is not > 1 (strict), then .5+.75 -> spike
    spikes, v = lif_scan(h[:, :2], torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                         None, torch.tensor([[0.5]], dtype=torch.float64))
    assert spikes.flatten().tolist() == [0.0, 1.0]
    assert v.item() == 0.25


def test_whole_op_hand_computed():
    # h = x[..., 0] (A = [1, 0]); out = x0 + x1 + 0.5 + 1.5 * 2 * s
    x = torch.tensor([[[0.75, 1.0], [0.75, -1.0], [0.5, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    out, spikes, state = spike_lora(
        x, torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64), 1.5, "lif",
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), None, None, 0, "atan", 2.0)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert out.flatten().tolist() == [2.25, 3.25, 1.0, 6.5]
    assert state.item() == 0.28125


def test_mt_and_heaviside_hand_computed():
    h = torch.tensor([[[0.26, -0.74, 0.04, 0.1]]], dtype=torch.float64)
    theta = torch.full((4,), 0.1, dtype=torch.float64)
    y, s, _ = bottleneck_forward(h, "mt", theta, torch.zeros(4), None, None, max_spikes=4)
    assert s.flatten().tolist() == [3.0, -4.0, 0.0, 1.0]
    assert torch.allclose(y, s * 0.1)
    y, s, _ = bottleneck_forward(h, "mt", theta, torch.zeros(4), None, None, max_spikes=0)  # uncapped
    assert s.flatten().tolist() == [3.0, -7.0, 0.0, 1.0]
    y, s, _ = bottleneck_forward(h, "heaviside", theta, torch.zeros(4), None, None, max_spikes=0)
    assert s.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # 0.1 is not > 0.1


@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
@pytest.mark.parametrize("with_reset,with_state", [(False, False), (True, True)])
def test_op_matches_naive_loop(neuron, with_reset, with_state):
    g = torch.Generator().manual_seed(3)
    bsz, steps, d_in, d_out, rank = 2, 9, 6, 5, 3
    x = torch.randn(bsz, steps, d_in, generator=g, dtype=torch.float64)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64)
    lora_a = torch.randn(rank, d_in, generator=g, dtype=torch.float64)
    lora_b = torch.randn(d_out, rank, generator=g, dtype=torch.float64)
    theta = torch.rand(rank, generator=g, dtype=torch.float64) + 0.2
    decay = torch.rand(rank, generator=g, dtype=torch.float64)
    reset = torch.rand(bsz, steps, generator=g) < 0.3 if with_reset else None
    state = torch.randn(bsz, rank, generator=g, dtype=torch.float64) if with_state else None
    out, spikes, final = spike_lora(x, weight, bias, lora_a, lora_b, 0.7, neuron, theta, decay, reset, state, 2,
                                    "atan", 2.0)
    y, s_ref, final_ref = naive_bottleneck(x @ lora_a.t(), neuron, theta, decay, reset, state, 2)
    torch.testing.assert_close(spikes, s_ref)
    torch.testing.assert_close(out, x @ weight.t() + bias + 0.7 * y @ lora_b.t())
    torch.testing.assert_close(final, final_ref)


def test_op_outputs_are_fresh_contiguous_tensors():
    x = torch.randn(2, 4, 3)
    state = torch.zeros(2, 2)
    out, spikes, final = spike_lora(x, torch.randn(5, 3), None, torch.randn(2, 3), torch.randn(5, 2), 1.0, "mt",
                                    torch.ones(2), torch.ones(2), None, state, 0, "atan", 2.0)
    assert spikes.is_contiguous() and out.is_contiguous()
    assert final.data_ptr() != state.data_ptr()


def _loop_scan(u, decay, cut, v0):
    v = torch.zeros(u.shape[0], u.shape[2], dtype=u.dtype) if v0 is None else v0.clone()
    out = torch.empty_like(u)
    for t in range(u.shape[1]):
        keep = 1.0 if cut is None else (~cut[:, t]).to(u.dtype)[:, None]
        v = decay * keep * v + u[:, t]
        out[:, t] = v
    return out


def _loop_reverse(c, decay, cut):
    g = torch.zeros(c.shape[0], c.shape[2], dtype=c.dtype)
    out = torch.empty_like(c)
    for t in reversed(range(c.shape[1])):
        if t < c.shape[1] - 1:
            keep = 1.0 if cut is None else (~cut[:, t + 1]).to(c.dtype)[:, None]
            g = decay * keep * g
        g = g + c[:, t]
        out[:, t] = g
    return out


@pytest.mark.parametrize("steps", [1, 5, 64, 150])
def test_linear_scans_match_loops(steps):
    g = torch.Generator().manual_seed(steps)
    u = torch.randn(2, steps, 3, generator=g, dtype=torch.float64)
    decay = torch.tensor([0.0, 0.5, 0.97], dtype=torch.float64)
    cut = torch.rand(2, steps, generator=g) < 0.1
    v0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    for scan in (linear_scan, linear_scan_chunked, linear_scan_numpy):
        torch.testing.assert_close(scan(u, decay, cut, v0), _loop_scan(u, decay, cut, v0))
        torch.testing.assert_close(scan(u, decay, None, None), _loop_scan(u, decay, None, None))
    torch.testing.assert_close(reverse_linear_scan(u, decay, cut), _loop_reverse(u, decay, cut))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lif_scan_torch_and_numpy_agree(dtype):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(3, 70, 4, generator=g).to(dtype)
    theta = (torch.rand(4, generator=g) + 0.2).to(dtype)
    decay = torch.rand(4, generator=g).to(dtype)
    reset = torch.rand(3, 70, generator=g) < 0.1
    state = torch.randn(3, 4, generator=g).to(dtype)
    s_t, v_t = lif_scan_torch(h, theta, decay, reset, state)
    s_n, v_n = lif_scan_numpy(h, theta, decay, reset, state)
    assert torch.equal(s_t, s_n)  # random inputs: no membrane lands within rounding of the threshold
    torch.testing.assert_close(v_t, v_n)


def test_unknown_neuron_is_refused():
    with pytest.raises(ValueError, match="neuron='relu' is not one of heaviside, mt, lif"):
        spike_lora(torch.ones(1, 1, 2), torch.ones(1, 2), None, torch.ones(1, 2), torch.ones(1, 1), 1.0, "relu",
                   torch.ones(1), torch.ones(1), None, None, 0, "atan", 2.0)
