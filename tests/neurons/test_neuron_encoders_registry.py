"""Encoders (direct, rate, latency via snntorch.spikegen) and the neuron-kind registry."""

from __future__ import annotations

import pytest
import torch

from hybridtune.neurons import (
    DynamicThreshold,
    GradedNeuron,
    IFNeuron,
    LIFNeuron,
    RateCodedIF,
    StaticThreshold,
    available_neurons,
    encode,
    encode_direct,
    encode_latency,
    encode_rate,
    make_neuron,
    register_neuron,
)


def test_direct():
    x = torch.tensor([0.5, -1.0])
    out = encode_direct(x, 3)
    assert out.shape == (3, 2) and torch.equal(out[2], x)
    assert torch.equal(encode(x, "direct"), x[None])


def test_rate_golden_extremes_and_convergence():
    assert encode_rate(torch.tensor([0.0, 1.0, 2.0, -1.0]), 4).tolist() == [[0.0, 1.0, 1.0, 0.0]] * 4
    assert encode_rate(torch.tensor([-1.0, 0.5]), 2, gain=2.0, signed=True).tolist() == [[-1.0, 1.0]] * 2
    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(encode_rate(p, 20_000).mean(0), p, atol=0.015)
    signed = encode_rate(torch.tensor([-0.3]), 20_000, signed=True).mean(0)
    assert signed.item() == pytest.approx(-0.3, abs=0.015)


def test_latency_golden():
    out = encode_latency(torch.tensor([1.0, 0.5, 0.25, 0.0]), 5)
    assert out.shape == (5, 4) and out.sum(0).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert out.argmax(0).tolist() == [0, 2, 3, 4]  # time = round(4 * (1 - x)); below threshold fires last
    clipped = encode_latency(torch.tensor([1.0, 0.0]), 3, clip=True)
    assert clipped.sum(0).tolist() == [1.0, 0.0]
    assert encode_latency(torch.tensor([0.5], dtype=torch.float64), 3).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_latency(torch.tensor([1.5]), 4)


def test_encode_errors():
    with pytest.raises(ValueError, match="unknown encoding 'phase'"):
        encode(torch.ones(1), "phase", 2)
    with pytest.raises(ValueError, match="num_steps"):
        encode_direct(torch.ones(1), 0)


def test_builtin_neuron_kinds():
    assert {"graded", "if", "lif", "rate_if"} <= set(available_neurons())
    g = make_neuron("graded", mode="rms", divisor=4.0, counting="base2", max_spikes=7)
    assert isinstance(g, GradedNeuron) and isinstance(g.threshold, DynamicThreshold)
    assert g.threshold.mode == "rms" and g.max_spikes == 7 and g.counting == "base2"
    s = make_neuron("graded", theta=torch.tensor([1.0, 2.0]))
    assert isinstance(s.threshold, StaticThreshold)
    assert isinstance(make_neuron("if", threshold=0.5), IFNeuron)
    assert isinstance(make_neuron("lif", decay=0.5), LIFNeuron)
    r = make_neuron("rate_if", num_steps=8, theta=1.0)
    assert isinstance(r, RateCodedIF) and r.num_steps == 8


def test_register_third_party_neuron():
    register_neuron("test_identity", lambda **kw: torch.nn.Identity(), overwrite=True)
    assert isinstance(make_neuron("test_identity"), torch.nn.Identity)
    with pytest.raises(ValueError, match="already registered"):
        register_neuron("graded", GradedNeuron)
    with pytest.raises(ValueError, match="unknown neuron kind 'nope'; available: "):
        make_neuron("nope")
    with pytest.raises(TypeError, match="callable"):
        register_neuron("bad", 3)
