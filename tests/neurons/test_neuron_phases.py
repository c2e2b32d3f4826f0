"""K-phase codes: saturation, bit-serial spikes and both countings on hand-made tensors; the module matches the math."""

import pytest
import torch

from hybridtune.neurons import (
    ChannelScaledThreshold,
    DynamicThreshold,
    GradedNeuron,
    SpikeStats,
    StaticThreshold,
    phase_bound,
    phase_quantize,
    phase_spikes,
    spike_count,
)


def test_phase_bound_and_saturation():
    assert [phase_bound(k) for k in (1, 4, 6, 8)] == [1, 15, 63, 255]
    v = torch.tensor([0.4, 6.6, -40.0, 15.4, 15.6, -15.5, 300.0])
    assert phase_quantize(v, 1.0, 4).tolist() == [0.0, 7.0, -15.0, 15.0, 15.0, -15.0, 15.0]
    assert phase_quantize(v, 1.0, 8).tolist() == [0.0, 7.0, -40.0, 15.0, 16.0, -16.0, 255.0]
    with pytest.raises(ValueError, match="phases"):
        phase_bound(0)


def test_counting_base2_at_most_k_and_unary_is_magnitude():
    q = phase_quantize(torch.tensor([0.0, 1.0, 2.0, 3.0, -7.0, 8.0, 15.0, -100.0]), 1.0, 4)
    assert spike_count(q, "base2").tolist() == [0, 1, 1, 2, 3, 1, 4, 4]
    assert spike_count(q, "unary").tolist() == [0.0, 1.0, 2.0, 3.0, 7.0, 8.0, 15.0, 15.0]
    assert int(spike_count(phase_quantize(torch.randn(1000) * 1e3, 1.0, 6), "base2").max()) <= 6


def test_phase_spikes_reconstruct_the_count():
    q = torch.tensor([0.0, 5.0, -6.0, 15.0, -15.0])
    s = phase_spikes(q, 4)
    assert s.shape == (4, 5)
    weights = torch.tensor([1.0, 2.0, 4.0, 8.0])[:, None]
    assert torch.equal((s * weights).sum(0), q)
    assert torch.equal(s.abs().sum(0), spike_count(q, "base2").float())
    with pytest.raises(ValueError, match="exceeds"):
        phase_spikes(torch.tensor([16.0]), 4)


def test_graded_neuron_with_phases_matches_functional_and_counts_both_ways():
    theta = torch.tensor([0.5, 1.0, 2.0])
    v = torch.tensor([[0.2, 9.0, -100.0], [3.3, -0.4, 7.9]])
    n = GradedNeuron(StaticThreshold(theta), counting="base2", phases=3)
    n.stats = SpikeStats()
    out = n(v)
    q = phase_quantize(v, theta, 3)
    assert torch.equal(out, q * theta)
    assert q.tolist() == [[0.0, 7.0, -7.0], [7.0, 0.0, 4.0]]
    assert n.stats.spikes == float(spike_count(q, "base2").sum()) == 10.0
    assert n.stats.unary_spikes == float(q.abs().sum()) == 25.0
    assert n.stats.spikes_per_neuron_unary == pytest.approx(25 / 6)
    assert n.max_spikes == 7 and n.activation_bits == 4


def test_phases_and_conflicting_cap_is_an_error():
    with pytest.raises(ValueError, match="not both"):
        GradedNeuron(StaticThreshold(torch.tensor(1.0)), max_spikes=10, phases=4)
    assert GradedNeuron(StaticThreshold(torch.tensor(1.0)), max_spikes=15, phases=4).max_spikes == 15


def test_channel_scaled_threshold_matches_its_formula():
    scale = torch.tensor([1.0, 4.0, 0.5])
    v = torch.tensor([[1.0, 8.0, -0.5], [0.0, -4.0, 2.0]])
    t = ChannelScaledThreshold(DynamicThreshold("mean_abs", divisor=2.0), scale)
    expected = (v / scale).abs().mean(-1, keepdim=True) / 2.0 * scale
    assert torch.allclose(t(v), expected)
    with pytest.raises(ValueError, match="scale"):
        ChannelScaledThreshold(DynamicThreshold(), torch.tensor([1.0, 0.0]))
