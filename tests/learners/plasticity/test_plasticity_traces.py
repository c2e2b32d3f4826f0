"""Traces: chunked scan against the sequential recursion (masks, resets, carries, long sequences, dtypes)."""

from __future__ import annotations

import math

import pytest
import torch

from hybridtune.learners.plasticity import (
    decay_from_tau,
    discounted_reverse_cumsum,
    trace_scan,
    trace_sequential,
    trace_step,
)

S3 = torch.tensor([[1.0], [0.0], [1.0]])


def test_golden_three_tokens():
    # λ = 0.5, spikes at t = 0 and 2: x = [1, 0.5, 0.5*0.5 + 1]
    assert trace_scan(S3, 0.5).flatten().tolist() == [1.0, 0.5, 1.25]
    # exclusive: the trace just before each spike, a[t] x[t-1]
    assert trace_scan(S3, 0.5, inclusive=False).flatten().tolist() == [0.0, 0.5, 0.25]
    # a document starts at t = 2: the trace restarts there
    assert trace_scan(S3, 0.5, reset=torch.tensor([False, False, True])).flatten().tolist() == [1.0, 0.5, 1.0]
    # t = 1 is padding: no decay step there, so t = 2 sees one decay from t = 0
    s = torch.tensor([[1.0], [9.0], [1.0]])
    assert trace_scan(s, 0.5, mask=torch.tensor([True, False, True])).flatten().tolist() == [1.0, 1.0, 1.5]


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_scan_equals_loop_float64(ref, inclusive, lam, chunk):
    s = ref.random_spikes((3, 37, 4), graded=True, seed=1)
    reset = ref.random_flags((3, 37), 0.1, seed=2)
    mask = ref.random_flags((3, 37), 0.8, seed=3)
    init = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = ref.trace_loop(s, lam, reset, mask, inclusive, initial=init)
    got = trace_scan(s, lam, reset=reset, mask=mask, inclusive=inclusive, chunk=chunk, initial=init)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    seq = trace_sequential(s, lam, reset=reset, mask=mask, inclusive=inclusive, initial=init)
    torch.testing.assert_close(seq, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam", [math.exp(-1 / 4), 0.99, 1.0])
def test_long_float32_is_stable_and_exact(ref, lam):
    length = 4096
    s = ref.random_spikes((2, length, 3), rate=0.2, seed=5)
    reset = ref.random_flags((2, length), 0.002, seed=6)
    mask = ref.random_flags((2, length), 0.97, seed=7)
    # float64 sequential recursion with λ rounded to float32 as the scan sees it (that rounding is not the scan's)
    want = ref.trace_loop(s, float(torch.tensor(lam, dtype=torch.float32)), reset, mask)
    got = trace_scan(s.float(), lam, reset=reset, mask=mask)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    scale = want.abs().max()
    assert (got.double() - want).abs().max() <= 1e-6 * scale
    # and against the float32 sequential loop (which accumulates its own rounding)
    seq32 = trace_sequential(s.float(), lam, reset=reset, mask=mask)
    assert (got - seq32).abs().max() <= 1e-5 * scale


def test_naive_prefix_form_overflows_where_scan_does_not():
    # Why the scan is chunked: x[t] = λ^t cumsum(λ^-k s[k]) needs λ^-4095, which is inf in float32 at τ = 4.
    lam = decay_from_tau(4.0)
    s = torch.ones(1, 4096, 1)
    t = torch.arange(4096, dtype=torch.float32)
    lam32 = torch.tensor(lam, dtype=torch.float32)
    naive = lam32**t * torch.cumsum(lam32 ** (-t) * s[0, :, 0], 0)
    assert not torch.isfinite(naive).all()
    got = trace_scan(s, lam)
    torch.testing.assert_close(got[0, -1, 0], torch.tensor(1 / (1 - lam), dtype=torch.float32))


@pytest.mark.parametrize("split", [1, 7, 20])
def test_initial_state_carries_across_calls(ref, split):
    s = ref.random_spikes((2, 31, 3), seed=8)
    reset = ref.random_flags((2, 31), 0.1, seed=9)
    mask = ref.random_flags((2, 31), 0.8, seed=10)
    whole = trace_scan(s, 0.8, reset=reset, mask=mask)
    first = trace_scan(s[:, :split], 0.8, reset=reset[:, :split], mask=mask[:, :split])
    second = trace_scan(s[:, split:], 0.8, reset=reset[:, split:], mask=mask[:, split:], initial=first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_leading_dims_and_integer_spikes(ref):
    s = ref.random_spikes((2, 3, 19, 4), seed=11)
    mask = ref.random_flags((2, 3, 19), 0.8, seed=12)
    got = trace_scan(s.to(torch.bool), 0.7, mask=mask)
    assert got.dtype == torch.get_default_dtype() and got.shape == s.shape
    want = ref.trace_loop(s.reshape(6, 19, 4), 0.7, mask=mask.reshape(6, 19)).reshape(s.shape)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_padding_is_invisible(ref):
    # Left- and right-padding with garbage spikes leaves the traces at real tokens unchanged.
    s = ref.random_spikes((1, 12, 2), seed=13)
    garbage = torch.full((1, 3, 2), 5.0, dtype=torch.float64)
    padded = torch.cat([garbage, s, garbage], 1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 12), torch.zeros(1, 3)], 1).bool()
    torch.testing.assert_close(trace_scan(padded, 0.6, mask=mask)[:, 3:15], trace_scan(s, 0.6))


def test_trace_step_matches_scan(ref):
    s = ref.random_spikes((2, 9, 3), seed=14)
    reset = ref.random_flags((2, 9), 0.2, seed=15)
    mask = ref.random_flags((2, 9), 0.8, seed=16)
    x = torch.zeros(2, 3, dtype=torch.float64)
    steps = []
    for t in range(9):
        x = trace_step(x, s[:, t], 0.5, reset_t=reset[:, t], mask_t=mask[:, t])
        steps.append(x)
    torch.testing.assert_close(torch.stack(steps, 1), trace_scan(s, 0.5, reset=reset, mask=mask))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reverse_discounted_cumsum_equals_loop(ref, dtype):
    g = torch.Generator().manual_seed(17)
    r = torch.randn(3, 50, generator=g, dtype=torch.float64)
    reset = ref.random_flags((3, 50), 0.1, seed=18)
    mask = ref.random_flags((3, 50), 0.8, seed=19)
    want = ref.reverse_discount_loop(r, 0.9, reset, mask)
    got = discounted_reverse_cumsum(r.to(dtype), 0.9, reset=reset, mask=mask, chunk=8)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_reverse_discounted_cumsum_long_float32(ref):
    g = torch.Generator().manual_seed(20)
    r = torch.randn(2, 4096, generator=g, dtype=torch.float64)
    reset = ref.random_flags((2, 4096), 0.001, seed=21)
    # Reference in float64 with γ rounded to float32: at γ = 0.999 the float32 rounding of γ itself moves the sums
    # by ~5e-6 relative (for the float32 loop as much as for the scan); the scan's own error is ~3e-7.
    want = ref.reverse_discount_loop(r, float(torch.tensor(0.999, dtype=torch.float32)), reset)
    got = discounted_reverse_cumsum(r.float(), 0.999, reset=reset)
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() <= 1e-6 * want.abs().max()
    loop32 = ref.reverse_discount_loop(r.float(), 0.999, reset)
    assert (got - loop32).abs().max() <= 2e-5 * want.abs().max()


def test_decay_from_tau():
    assert decay_from_tau(4.0) == pytest.approx(math.exp(-0.25))
    assert decay_from_tau(4.0, kind="euler") == 0.75
    with pytest.raises(ValueError, match="tau"):
        decay_from_tau(0.0)
    with pytest.raises(ValueError, match="euler"):
        decay_from_tau(0.5, kind="euler")
    with pytest.raises(ValueError, match="kind"):
        decay_from_tau(2.0, kind="linear")


def test_bad_inputs_are_named():
    s = torch.ones(2, 5, 3)
    with pytest.raises(ValueError, match="decay"):
        trace_scan(s, 1.5)
    with pytest.raises(ValueError, match="decay must be a scalar"):
        trace_scan(s, torch.ones(3))
    with pytest.raises(ValueError, match="mask must have shape"):
        trace_scan(s, 0.5, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset must have shape"):
        trace_scan(s, 0.5, reset=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="initial"):
        trace_scan(s, 0.5, initial=torch.ones(2, 4))
    with pytest.raises(ValueError, match="chunk"):
        trace_scan(s, 0.5, chunk=0)
    with pytest.raises(ValueError, match=r"\[\.\.\., L, C\]"):
        trace_scan(torch.ones(5), 0.5)
    with pytest.raises(ValueError, match="gamma"):
        discounted_reverse_cumsum(torch.ones(5), -0.1)
