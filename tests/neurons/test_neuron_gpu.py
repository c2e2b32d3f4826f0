"""The neuron numerics on CUDA equal the CPU results (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from hybridtune.neurons import (
    DynamicThreshold,
    GradedNeuron,
    IFNeuron,
    SpikeStats,
    SpikingLinear,
    StaticThreshold,
    get_surrogate,
    spike_count,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


@pytest.mark.parametrize("counting", ["unary", "base2"])
def test_graded_neuron_cuda_matches_cpu(counting):
    torch.manual_seed(0)
    v = torch.randn(2, 64, 96) * torch.logspace(-1, 3, 96)
    cpu = GradedNeuron(DynamicThreshold("rms", 8.0), counting=counting)
    gpu = GradedNeuron(DynamicThreshold("rms", 8.0), counting=counting).cuda()
    cpu.stats, gpu.stats = SpikeStats(), SpikeStats()
    torch.testing.assert_close(gpu(v.cuda()).cpu(), cpu(v), rtol=1e-5, atol=1e-5)
    assert gpu.stats.neuron_steps == cpu.stats.neuron_steps
    assert gpu.stats.spikes == pytest.approx(cpu.stats.spikes, rel=1e-4)
    q = torch.tensor([0.0, 2.0, -3.0, 7.0, -19_000.0], device="cuda")
    assert spike_count(q, "base2").tolist() == [0, 1, 2, 3, bin(19_000).count("1")]


def test_spiking_linear_and_state_on_cuda():
    lin = torch.nn.Linear(8, 4)
    spk = SpikingLinear.from_linear(lin, GradedNeuron(StaticThreshold(torch.full((8,), 0.25)))).cuda()
    x = torch.randn(3, 8)
    torch.testing.assert_close(spk(x.cuda()).cpu(), spk.cpu()(x), rtol=1e-5, atol=1e-5)
    n = IFNeuron(surrogate="atan")
    n(torch.ones(2))
    n.cuda()
    assert n.v.is_cuda
    x = torch.tensor([0.3, -0.2], device="cuda", requires_grad=True)
    get_surrogate("fast_sigmoid").spike(x).sum().backward()
    assert x.grad.is_cuda
