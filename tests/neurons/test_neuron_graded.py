"""GradedNeuron, thresholds, calibration and SpikeStats: golden values, functional agreement, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from hybridtune.neurons import (
    ChannelCalibrator,
    DynamicThreshold,
    GradedNeuron,
    SpikeStats,
    StaticThreshold,
    ThresholdStrategy,
    calibrate_static_threshold,
    dynamic_threshold,
    graded_quantize,
    spike_count,
    stats,
)

V = torch.tensor([0.4, 1.6, -2.6, 7.0])


def test_forward_golden_static():
    n = GradedNeuron(StaticThreshold(torch.tensor(1.0)))
    assert n(V).tolist() == [0.0, 2.0, -3.0, 7.0]
    capped = GradedNeuron(StaticThreshold(torch.tensor(0.5)), max_spikes=4)
    assert capped(V).tolist() == [0.5, 1.5, -2.0, 2.0]  # q = [1, 3, -4(cap from -5), 4(cap from 14)]


def test_forward_golden_per_channel_and_dynamic():
    n = GradedNeuron(StaticThreshold(torch.tensor([0.5, 1.0, 2.0, 4.0])))
    assert n(V).tolist() == [0.5, 2.0, -2.0, 8.0]  # q = [1, 2, -1, 2]
    d = GradedNeuron(DynamicThreshold("mean_abs", divisor=1.0))
    v = torch.tensor([[1.0, 3.0, -8.0, 0.0]])  # mean|v| = 3
    assert d(v).tolist() == [[0.0, 3.0, -9.0, 0.0]]


def test_module_agrees_with_functional():
    torch.manual_seed(0)
    v = torch.randn(3, 7, 16) * torch.logspace(-1, 2, 16)
    for mode in ("mean_abs", "rms"):
        for cap in (None, 3):
            n = GradedNeuron(DynamicThreshold(mode, 8.0), max_spikes=cap)
            theta = dynamic_threshold(v, mode, 8.0)
            assert torch.equal(n(v), graded_quantize(v, theta, cap) * theta)
            q, th = n.quantize(v)
            assert torch.equal(q, graded_quantize(v, theta, cap)) and torch.equal(th, theta)


def test_straight_through_backward_and_no_threshold_grad():
    v = (torch.randn(4, 8) * 5).requires_grad_(True)
    n = GradedNeuron(DynamicThreshold("rms", 4.0))
    g = torch.randn(4, 8)
    n(v).backward(g)
    assert torch.equal(v.grad, g)
    theta = torch.tensor(0.5, requires_grad=True)
    v2 = torch.randn(5, requires_grad=True)
    GradedNeuron(lambda x: theta)(v2).sum().backward()
    assert theta.grad is None and torch.equal(v2.grad, torch.ones(5))


def test_output_dtype_follows_input():
    n = GradedNeuron(StaticThreshold(torch.tensor([1.0, 2.0])))
    assert n(torch.tensor([3.0, 3.0], dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert n(torch.tensor([3.0, 3.0], dtype=torch.float64)).dtype == torch.float64


def test_stats_golden_unary_and_base2():
    for counting, spikes in (("unary", 12.0), ("base2", 6.0)):  # |q| = 0,2,3,7 ; popcount 0,1,2,3
        n = GradedNeuron(StaticThreshold(torch.tensor(1.0)), counting=counting)
        n.fan_out = 10
        n(V)  # stats None: nothing recorded, nothing breaks
        n.stats = SpikeStats()
        n(V)
        n(torch.tensor([[0.1, 0.2, 0.3, -0.4]]))  # all silent
        assert n.stats == SpikeStats(spikes=spikes, neuron_steps=8, silent=5, sops=spikes * 10, unary_spikes=12.0)
        assert n.stats.silent_share == 5 / 8
        assert n.stats.spikes_per_neuron == spikes / 8


def test_stats_counted_in_training_mode_once():
    n = GradedNeuron(StaticThreshold(torch.tensor(1.0)))
    n.stats = SpikeStats()
    v = V.clone().requires_grad_(True)
    n(v).sum().backward()
    assert n.stats.spikes == 12.0 and n.stats.neuron_steps == 4


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.neuron = GradedNeuron(StaticThreshold(torch.tensor(1.0)), counting="base2")

    def forward(self, x):
        return self.lin(self.neuron(x))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_no_double_count_under_gradient_checkpointing(use_reentrant, monkeypatch):
    block = _Block()
    x = V[None].clone().requires_grad_(True)
    block.neuron.stats = SpikeStats()
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    assert block.neuron.stats == SpikeStats(spikes=6.0, neuron_steps=4, silent=1, sops=6.0, unary_spikes=12.0)
    assert x.grad is not None
    # The guard is what prevents it: without it the recomputation inside backward counts again.
    monkeypatch.setattr(stats, "recomputing", lambda: False)
    block.neuron.stats = SpikeStats()
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    assert block.neuron.stats.neuron_steps == 8


def test_spike_stats_arithmetic_and_tensor_record():
    a = SpikeStats()
    a.record(torch.tensor(5.0), torch.tensor(2), 4, fan_out=3)
    assert a == SpikeStats(spikes=5.0, neuron_steps=4, silent=2, sops=15.0, unary_spikes=5.0)  # unary: = spikes
    b = a + SpikeStats(spikes=1.0, neuron_steps=4, silent=4, sops=2.0, unary_spikes=3.0)
    assert b == SpikeStats(spikes=6.0, neuron_steps=8, silent=6, sops=17.0, unary_spikes=8.0) and a.spikes == 5.0
    a += b
    assert a.neuron_steps == 12
    assert SpikeStats().spikes_per_neuron == 0.0 and SpikeStats().silent_share == 0.0
    assert set(a.as_dict()) == {"spikes", "neuron_steps", "silent", "sops", "unary_spikes", "spikes_per_neuron",
                                "spikes_per_neuron_unary", "silent_share"}


def test_static_threshold_buffer_state_dict_and_to():
    th = StaticThreshold(torch.tensor([1.0, 2.0, 4.0]))
    n = GradedNeuron(th)
    assert isinstance(th, ThresholdStrategy)
    assert list(n.state_dict()) == ["threshold.theta"]
    n.to(torch.float64)
    assert th.theta.dtype == torch.float64
    fresh = GradedNeuron(StaticThreshold(torch.ones(1)))
    fresh.load_state_dict(n.state_dict())  # channel count comes from the calibration state
    assert fresh.threshold.theta.tolist() == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="3 channels but the input's last dim is 2"):
        n(torch.zeros(2))


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 0.0]), torch.tensor([float("nan")]), torch.ones(2, 2),
                                 torch.tensor([1, 2])])
def test_static_threshold_rejects_bad_theta(bad):
    with pytest.raises(ValueError, match="theta"):
        StaticThreshold(bad)


def test_bad_neuron_arguments():
    with pytest.raises(ValueError, match="counting='popcount'"):
        GradedNeuron(DynamicThreshold(), counting="popcount")
    with pytest.raises(ValueError, match="max_spikes"):
        GradedNeuron(DynamicThreshold(), max_spikes=-2)
    with pytest.raises(TypeError, match="ThresholdStrategy"):
        GradedNeuron(1.0)
    with pytest.raises(ValueError, match="mode='median'"):
        DynamicThreshold("median")


def test_calibrate_static_threshold_golden():
    s = torch.tensor([[1.0, -4.0, 0.0], [3.0, 4.0, 0.0], [-2.0, 1.0, 0.0], [2.0, -3.0, 0.0]])
    assert calibrate_static_threshold(s, "mean_abs", divisor=2.0).tolist()[:2] == [1.0, 1.5]
    assert calibrate_static_threshold(s, "max_abs", divisor=1.0).tolist()[:2] == [3.0, 4.0]
    assert calibrate_static_threshold(s, "rms", divisor=1.0)[0].item() == pytest.approx((18 / 4) ** 0.5)
    assert calibrate_static_threshold(s, "percentile", divisor=1.0, percentile=50).tolist()[:2] == [2.0, 3.0]
    assert calibrate_static_threshold(s, "mean_abs", divisor=1.0, eps=1e-3)[2].item() == pytest.approx(1e-3)
    scalar = calibrate_static_threshold(s, "max_abs", divisor=2.0, per_channel=False)
    assert scalar.shape == () and scalar.item() == 2.0
    # iterable of batches == concatenation; deterministic
    parts = [s[:1], s[1:].reshape(1, 3, 3)]
    assert torch.equal(calibrate_static_threshold(parts, "percentile", percentile=75),
                       calibrate_static_threshold(s, "percentile", percentile=75))


def test_calibrate_static_threshold_errors():
    with pytest.raises(ValueError, match="method='median'"):
        calibrate_static_threshold(torch.ones(2, 2), "median")
    with pytest.raises(ValueError, match="percentile=0"):
        calibrate_static_threshold(torch.ones(2, 2), "percentile", percentile=0)
    with pytest.raises(ValueError, match="empty"):
        calibrate_static_threshold([])
    with pytest.raises(ValueError, match="channel counts differ"):
        calibrate_static_threshold([torch.ones(2, 2), torch.ones(2, 3)])


def test_spike_count_consistent_with_stats_on_random_input():
    torch.manual_seed(1)
    v = torch.randn(2, 5, 32) * 4
    n = GradedNeuron(DynamicThreshold("mean_abs", 8.0), counting="base2")
    n.stats = SpikeStats()
    n(v)
    q, _ = n.quantize(v)
    assert n.stats.spikes == spike_count(q, "base2").sum().item()
    assert n.stats.silent == int((q == 0).sum())


def test_channel_calibrator_matches_batch_calibration():
    torch.manual_seed(2)
    batches = [torch.randn(2, 5, 6) * torch.arange(1, 7) for _ in range(3)]
    cal = ChannelCalibrator(keep_samples=True)
    for b in batches:
        cal.update(b)
    assert cal.count == 30
    for method in ("mean_abs", "rms", "max_abs", "percentile"):
        torch.testing.assert_close(cal.threshold(method, 4.0, percentile=90),
                                   calibrate_static_threshold(batches, method, 4.0, percentile=90))
    masked = ChannelCalibrator()
    masked.update(torch.tensor([[1.0, 2.0], [100.0, 100.0]]), mask=torch.tensor([True, False]))
    assert masked.threshold("max_abs", 1.0).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="keep_samples=True"):
        masked.threshold("percentile")
    with pytest.raises(ValueError, match="expected 2 channels, got 3"):
        masked.update(torch.ones(1, 3))
    with pytest.raises(ValueError, match="no activations"):
        ChannelCalibrator().threshold()
