"""Golden values for the pure neuron functions (hand-computable)."""

from __future__ import annotations

import pytest
import torch

from hybridtune.neurons import functional as F


def test_graded_quantize_golden():
    v = torch.tensor([0.4, 1.6, -2.6, 7.0])
    assert F.graded_quantize(v, torch.tensor(1.0), None).tolist() == [0.0, 2.0, -3.0, 7.0]
    assert F.graded_quantize(v, torch.tensor(1.0), 5).tolist() == [0.0, 2.0, -3.0, 5.0]
    assert F.graded_quantize(v, 2.0, None).tolist() == [0.0, 1.0, -1.0, 4.0]  # 3.5 -> 4 (half to even)
    assert F.graded_quantize(torch.tensor([0.5, 1.5, 2.5, -0.5]), 1.0).tolist() == [0.0, 2.0, 2.0, -0.0]
    assert F.graded_quantize(v, 1.0, 0).abs().sum() == 0


def test_graded_quantize_per_channel_and_per_token_theta():
    v = torch.tensor([[1.0, 4.0], [-3.0, 9.0]])
    assert F.graded_quantize(v, torch.tensor([0.5, 2.0])).tolist() == [[2.0, 2.0], [-6.0, 4.0]]  # 4.5 -> 4
    assert F.graded_quantize(v, torch.tensor([[1.0], [3.0]])).tolist() == [[1.0, 4.0], [-1.0, 3.0]]


def test_graded_quantize_does_not_modify_input_and_bad_cap():
    v = torch.tensor([0.4, 1.6])
    F.graded_quantize(v, 1.0, 1)
    assert v.tolist() == pytest.approx([0.4, 1.6])
    with pytest.raises(ValueError, match="max_spikes"):
        F.graded_quantize(v, 1.0, -1)


def test_popcount_golden_and_large_counts():
    n = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 256, 19_999, 2**31 - 1])
    expected = [bin(int(i)).count("1") for i in n]
    assert F.popcount(n).tolist() == expected
    many = torch.arange(0, 70_000)
    assert F.popcount(many).tolist() == [bin(i).count("1") for i in range(70_000)]


def test_spike_count_golden():
    q = torch.tensor([0.0, 2.0, -3.0, 7.0])
    assert F.spike_count(q, "unary").tolist() == [0.0, 2.0, 3.0, 7.0]
    assert F.spike_count(q, "base2").tolist() == [0, 1, 2, 3]
    assert F.spike_count(torch.tensor([-19_000.0]), "base2").tolist() == [bin(19_000).count("1")]
    with pytest.raises(ValueError, match="counting='ternary'"):
        F.spike_count(q, "ternary")


def test_dynamic_threshold_golden():
    v = torch.tensor([[1.0, -3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    mean_abs = F.dynamic_threshold(v, "mean_abs", 2.0)
    assert mean_abs.shape == (2, 1)
    assert mean_abs[0].item() == pytest.approx(1.0)  # mean|v| = 2, / 2
    assert mean_abs[1].item() > 0  # floored: an all-zero token gets a valid threshold
    rms = F.dynamic_threshold(v, "rms", 1.0)
    assert rms[0].item() == pytest.approx((26 / 4) ** 0.5)
    assert torch.equal(F.graded_quantize(v, mean_abs)[1], torch.zeros(4))
    with pytest.raises(ValueError, match="mode='max'"):
        F.dynamic_threshold(v, "max", 1.0)
    with pytest.raises(ValueError, match="divisor"):
        F.dynamic_threshold(v, "rms", 0.0)


def test_dynamic_threshold_half_precision_all_zero_token():
    v = torch.zeros(2, 8, dtype=torch.float16)
    theta = F.dynamic_threshold(v, "rms", 8.0)
    assert theta.dtype == torch.float16 and bool((theta > 0).all())
    assert torch.equal(F.graded_quantize(v, theta), torch.zeros_like(v))


def test_expected_residual_and_mask():
    v = torch.tensor([[0.5, 1.75], [1.25, -0.25], [9.0, 9.0]])
    q = F.graded_quantize(v, 1.0)
    # residuals: [0.5, -0.25], [0.25, -0.25], [0, 0]
    assert F.expected_residual(v, q, 1.0).tolist() == pytest.approx([0.25, -1 / 6])
    mask = torch.tensor([True, True, False])
    assert F.expected_residual(v, q, 1.0, mask).tolist() == [0.375, -0.25]


def test_fold_compensation_restores_the_mean():
    torch.manual_seed(0)
    w, b = torch.randn(3, 5), torch.randn(3)
    v = torch.randn(100, 5) * 3
    q = F.graded_quantize(v, 1.0)
    r = F.expected_residual(v, q, 1.0)
    delta = F.fold_compensation(w, r)
    assert torch.allclose(delta, w @ r)
    compensated = torch.nn.functional.linear(q, w, b + delta).mean(0)
    exact = torch.nn.functional.linear(v, w, b).mean(0)
    assert torch.allclose(compensated, exact, atol=1e-5)
    with pytest.raises(ValueError, match=r"in_features\]=\[5\]"):
        F.fold_compensation(w, torch.zeros(3))
