"""SpikingLinear: equals nn.Linear / Conv1D without an encoder, F.linear(q * theta) with one; compensation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from hybridtune.neurons import (
    DynamicThreshold,
    GradedNeuron,
    SpikeStats,
    SpikingLinear,
    StaticThreshold,
    expected_residual,
    graded_quantize,
)


def _linear(bias=True):
    torch.manual_seed(0)
    return torch.nn.Linear(6, 3, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_no_encoder_equals_linear(bias):
    lin = _linear(bias)
    spk = SpikingLinear.from_linear(lin)
    x = torch.randn(2, 5, 6)
    assert torch.equal(spk(x), lin(x))
    assert spk.weight is lin.weight and not spk.weight.requires_grad
    assert (spk.bias is None) == (not bias)
    assert spk.in_features == 6 and spk.out_features == 3 and spk.encoder is None
    assert torch.equal(spk.encode(x), x)


def test_with_encoder_equals_linear_of_dequantised_spikes():
    lin = _linear()
    theta = torch.tensor([0.5, 1.0, 0.25, 2.0, 1.0, 0.5])
    enc = GradedNeuron(StaticThreshold(theta))
    spk = SpikingLinear.from_linear(lin, encoder=enc)
    x = torch.randn(4, 6) * 3
    expected = F.linear(graded_quantize(x, theta) * theta, lin.weight, lin.bias)
    assert torch.equal(spk(x), expected)
    assert enc.fan_out == 3
    enc.stats = SpikeStats()
    spk(x)
    assert enc.stats.sops == enc.stats.spikes * 3


def test_conv1d_conversion_equals_conv1d_forward():
    torch.manual_seed(0)
    conv = Conv1D(nf=5, nx=4)
    torch.nn.init.normal_(conv.bias)
    spk = SpikingLinear.from_linear(conv)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(spk(x), conv(x))
    assert spk.weight.shape == (5, 4) and spk.weight.is_contiguous() and not spk.weight.requires_grad
    assert not spk.bias.requires_grad


def test_compensation_is_folded_and_saved():
    lin = _linear()
    torch.manual_seed(3)
    x = torch.randn(200, 6) * 2
    theta = torch.tensor(1.0)
    r = expected_residual(x, graded_quantize(x, theta), theta)
    spk = SpikingLinear.from_linear(lin, GradedNeuron(StaticThreshold(theta)), compensation=r)
    torch.testing.assert_close(spk.compensation_bias, lin.weight @ r)
    torch.testing.assert_close(spk(x).mean(0), lin(x).mean(0), atol=1e-5, rtol=0)
    sd = spk.state_dict()
    assert {"weight", "bias", "compensation_bias", "encoder.threshold.theta"} <= set(sd)
    plain = SpikingLinear.from_linear(_linear(), GradedNeuron(StaticThreshold(theta)))
    assert torch.equal(plain.compensation_bias, torch.zeros(3))
    plain.load_state_dict(sd)
    assert torch.equal(plain(x), spk(x))
    plain.set_compensation(None)
    assert torch.equal(plain.compensation_bias, torch.zeros(3))
    with pytest.raises(ValueError, match=r"in_features\]=\[6\]"):
        plain.set_compensation(torch.zeros(3))


def test_no_bias_with_compensation():
    lin = _linear(bias=False)
    r = torch.full((6,), 0.1)
    spk = SpikingLinear.from_linear(lin, compensation=r)
    x = torch.randn(3, 6)
    torch.testing.assert_close(spk(x), F.linear(x + r, lin.weight))


def test_gradients_reach_input_through_frozen_weight():
    spk = SpikingLinear.from_linear(_linear(), GradedNeuron(DynamicThreshold("rms", 8.0)))
    x = torch.randn(2, 6, requires_grad=True)
    spk(x).sum().backward()
    assert torch.allclose(x.grad, spk.weight.sum(0).expand(2, 6))
    assert spk.weight.grad is None
    assert not any(p.requires_grad for p in spk.parameters())


def test_direct_construction_and_dtype_move():
    spk = SpikingLinear(4, 2, encoder=GradedNeuron(StaticThreshold(torch.ones(4))))
    assert not spk.weight.requires_grad and spk.encoder.fan_out == 2
    spk.to(torch.float64)
    assert spk.compensation_bias.dtype == torch.float64 and spk.encoder.threshold.theta.dtype == torch.float64
    assert spk(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64
    assert isinstance(spk, torch.nn.Linear)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D; got Conv2d"):
        SpikingLinear.from_linear(torch.nn.Conv2d(1, 1, 1))
