"""IF / LIF (soft reset) by hand, rate coding convergence, modules vs functions, state, reset walker."""

from __future__ import annotations

import pytest
import torch

from hybridtune.neurons import (
    IFNeuron,
    LIFNeuron,
    RateCodedIF,
    SpikeStats,
    StaticThreshold,
    get_surrogate,
    if_rate_count,
    if_sequence,
    if_step,
    lif_sequence,
    lif_step,
    reset_state,
)


def test_if_sequence_by_hand():
    # v: 0.375, 0.75, 1.125 -> spike -> 0.125, 0.5, 0.875, 1.25 -> spike -> 0.25
    x = torch.full((6, 1), 0.375)
    s, v = if_sequence(x, theta=1.0)
    assert s.squeeze(-1).tolist() == [0, 0, 1, 0, 0, 1]
    assert v.tolist() == [0.25]


def test_lif_sequence_by_hand_with_reset_mask():
    x = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])[:, None]
    # decay 0.5, theta 1.25: v=1 ; 0.5+1=1.5 spike -> 0.25 ; 1.125 ; 1.5625 spike -> 0.3125 ; 1.15625
    s, v = lif_sequence(x, theta=1.25, decay=0.5)
    assert s.squeeze(-1).tolist() == [0, 1, 0, 1, 0] and v.tolist() == [1.15625]
    # reset at t=1 drops the carried 0.5: v = 1, 1, 1.5 (spike) -> 0.25, 1.125, 1.5625 (spike) -> 0.3125
    reset = torch.tensor([0, 1, 0, 0, 0])[:, None]
    s, v = lif_sequence(x, theta=1.25, decay=0.5, reset=reset)
    assert s.squeeze(-1).tolist() == [0, 0, 1, 0, 1] and v.tolist() == [0.3125]
    # a membrane exactly at threshold does not fire (functional.fires: v > theta)
    s, _ = lif_sequence(torch.tensor([[1.5]]), theta=1.5, decay=0.5)
    assert s.tolist() == [[0.0]]


def test_step_functions_match_sequence_and_time_dim():
    torch.manual_seed(0)
    x = torch.rand(2, 7, 3)  # [B, T, C]
    s_seq, v_seq = lif_sequence(x, theta=0.8, decay=0.9, time_dim=1)
    v = torch.zeros(2, 3)
    for t in range(7):
        s, v = lif_step(v, x[:, t], 0.8, 0.9)
        assert torch.equal(s, s_seq[:, t])
    assert torch.equal(v, v_seq)
    s1, v1 = if_step(torch.tensor([0.5]), torch.tensor([0.5]))
    assert s1.tolist() == [0.0] and v1.tolist() == [1.0]  # fires at v > theta only (functional.fires)


def test_surrogate_lif_has_gradients_and_strict_threshold():
    sg = get_surrogate("atan")
    x = torch.tensor([[1.0], [0.5], [0.25]], requires_grad=True)
    s, _ = lif_sequence(x, theta=1.0, decay=1.0, surrogate=sg)
    assert s.squeeze(-1).tolist() == [0.0, 1.0, 0.0]  # snnTorch fires at v - theta > 0: 1.0 does not fire
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    x2 = x.detach().clone().requires_grad_(True)
    s2, _ = lif_sequence(x2, theta=1.0, decay=1.0, surrogate=sg, detach_reset=True)
    s2.sum().backward()
    assert not torch.equal(x.grad, x2.grad)


def test_rate_coding_converges_to_the_value():
    torch.manual_seed(0)
    a = torch.rand(1000)
    errs = []
    for T in (1, 4, 16, 64, 256):
        s, _ = if_sequence(a.expand(T, -1), theta=1.0)
        rate = s.mean(0)
        assert (rate - a).abs().max().item() < 1.0 / T + 1e-5  # soft reset: error below theta / T
        errs.append((rate - a).abs().mean().item())
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.003


def test_if_rate_count_closed_form_equals_simulation():
    torch.manual_seed(0)
    x = (torch.randint(-40, 41, (500,)) / 16.0)  # dyadic: float accumulation is exact
    for T in (1, 2, 5, 8, 32):
        pos, _ = if_sequence(x.abs().expand(T, -1), theta=1.0)
        assert torch.equal(if_rate_count(x, 1.0, T), pos.sum(0) * torch.sign(x))
    assert if_rate_count(torch.tensor([0.26, -0.5, 2.0]), 1.0, 4).tolist() == [1.0, -1.0, 4.0]
    with pytest.raises(ValueError, match="num_steps"):
        if_rate_count(x, 1.0, 0)


def test_modules_agree_with_functions_single_and_multi():
    torch.manual_seed(1)
    x = torch.rand(6, 2, 4)
    ref, v_ref = lif_sequence(x, theta=0.7, decay=0.8)
    single = LIFNeuron(threshold=0.7, decay=0.8)
    assert torch.equal(torch.stack([single(x[t]) for t in range(6)]), ref)
    assert torch.equal(single.v, v_ref)
    multi = LIFNeuron(threshold=0.7, decay=0.8, step_mode="multi")
    assert torch.equal(multi(x[:3]), ref[:3])  # state carries across calls like a KV cache
    assert torch.equal(multi(x[3:]), ref[3:])
    s_if, _ = if_sequence(x, theta=0.7)
    assert torch.equal(IFNeuron(threshold=0.7, step_mode="multi")(x), s_if)


def test_state_is_registered_nonpersistent_follows_to_and_resets():
    n = IFNeuron()
    n(torch.tensor([0.25, 0.5]))
    assert "v" in dict(n.named_buffers()) and "v" not in n.state_dict()
    n.to(torch.float64)
    assert n.v.dtype == torch.float64
    net = torch.nn.Sequential(n, torch.nn.Linear(2, 2), torch.nn.Sequential(LIFNeuron()))
    net[2][0](torch.ones(2))
    assert reset_state(net) == 2
    assert n.v is None and net[2][0].v is None
    other = IFNeuron()
    other(torch.ones(1))
    reset_state(n)
    assert other.v is not None  # no class-level registry: unrelated neurons keep their state


def test_lif_stats_golden():
    n = IFNeuron(step_mode="multi")
    n.fan_out = 2
    n.stats = SpikeStats()
    n(torch.full((4, 3), 0.625))  # v = 0.625, 1.25 (spike), 0.875, 1.5 (spike): t = 1, 3 for all 3 neurons
    assert n.stats == SpikeStats(spikes=6.0, neuron_steps=12, silent=6, sops=12.0, unary_spikes=6.0)


def test_rate_coded_if_module():
    n = RateCodedIF(StaticThreshold(torch.tensor(1.0)), num_steps=4)
    n.stats = SpikeStats()
    assert n(torch.tensor([0.3, -0.8, 0.1, 5.0])).tolist() == [0.25, -0.75, 0.0, 1.0]
    assert n.stats == SpikeStats(spikes=8.0, neuron_steps=4, silent=1, sops=8.0, unary_spikes=8.0)
    v = torch.randn(3, requires_grad=True)
    n(v).sum().backward()
    assert torch.equal(v.grad, torch.ones(3))


@pytest.mark.parametrize("kwargs, match", [({"step_mode": "both"}, "step_mode"), ({"threshold": 0.0}, "threshold"),
                                           ({"decay": 1.5}, "decay"), ({"surrogate": "nope"}, "unknown surrogate")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LIFNeuron(**kwargs)
