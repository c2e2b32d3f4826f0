"""Whole-sequence STDP GEMMs against the online per-step outer-product loop."""

from __future__ import annotations

import pytest
import torch

from hybridtune.learners.plasticity import stdp_delta, stdp_online_step, stdp_terms, stdp_update, trace_scan

PRE3 = torch.tensor([[1.0], [0.0], [1.0]])
POST3 = torch.tensor([[0.0], [1.0], [1.0]])


def test_golden_three_tokens():
    # λ = 0.5, pre spikes at t = 0, 2; post at t = 1, 2; A+ = 1, A- = 0.5.
    # inclusive: x_pre = [1, .5, 1.25], x_post = [0, 1, 1.5]; LTP = .5 + 1.25 = 1.75, LTD = 0 + 1.5 = 1.5
    ltp, ltd = stdp_terms(PRE3, trace_scan(PRE3, 0.5), POST3, trace_scan(POST3, 0.5))
    assert (ltp.item(), ltd.item()) == (1.75, 1.5)
    assert stdp_update(PRE3, POST3, decay_pre=0.5, decay_post=0.5, a_minus=0.5).item() == 1.0
    # exclusive: x_pre = [0, .5, .25], x_post = [0, 0, .5]; LTP = .75, LTD = .5 -> .75 - .25
    assert stdp_update(PRE3, POST3, decay_pre=0.5, decay_post=0.5, a_minus=0.5, inclusive=False).item() == 0.5


@pytest.mark.parametrize("inclusive", [True, False])
def test_pair_window(inclusive):
    # One pre spike at k, one post spike at t: ΔW = A+ λ+^(t-k) for k < t, -A- λ-^(k-t) for k > t,
    # and A+ - A- (inclusive) or 0 (exclusive) for k = t.
    a_plus, a_minus, lp, lm = 1.0, 0.6, 0.5, 0.8
    for k in range(5):
        for t in range(5):
            pre, post = torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, 1, dtype=torch.float64)
            pre[k], post[t] = 1.0, 1.0
            dw = stdp_update(
                pre, post, decay_pre=lp, decay_post=lm, a_plus=a_plus, a_minus=a_minus, inclusive=inclusive
            ).item()
            if k < t:
                want = a_plus * lp ** (t - k)
            elif k > t:
                want = -a_minus * lm ** (k - t)
            else:
                want = a_plus - a_minus if inclusive else 0.0
            assert dw == pytest.approx(want, abs=1e-12), (k, t)


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("flags", ["none", "mask", "reset", "both"])
@pytest.mark.parametrize("graded", [False, True])
def test_gemm_equals_online_loop(ref, inclusive, flags, graded):
    s_pre = ref.random_spikes((3, 23, 5), graded=graded, seed=1)
    s_post = ref.random_spikes((3, 23, 4), graded=graded, seed=2)
    reset = ref.random_flags((3, 23), 0.15, seed=3) if flags in ("reset", "both") else None
    mask = ref.random_flags((3, 23), 0.8, seed=4) if flags in ("mask", "both") else None
    kw = dict(a_plus=1.3, a_minus=0.7, reset=reset, mask=mask, inclusive=inclusive)
    want = ref.stdp_loop(s_pre, s_post, 0.7, 0.4, **kw)
    got = stdp_update(s_pre, s_post, decay_pre=0.7, decay_post=0.4, chunk=4, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    # the online single-step path gives the same total
    x_pre, x_post = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    total = torch.zeros(4, 5, dtype=torch.float64)
    for t in range(23):
        dw, x_pre, x_post = stdp_online_step(
            s_pre[:, t],
            s_post[:, t],
            x_pre,
            x_post,
            decay_pre=0.7,
            decay_post=0.4,
            a_plus=1.3,
            a_minus=0.7,
            inclusive=inclusive,
            reset_t=None if reset is None else reset[:, t],
            mask_t=None if mask is None else mask[:, t],
        )
        total += dw
    torch.testing.assert_close(total, want, rtol=1e-12, atol=1e-12)


def test_float32_long_sequence_matches_float64(ref):
    s_pre = ref.random_spikes((2, 1024, 6), rate=0.2, seed=5)
    s_post = ref.random_spikes((2, 1024, 3), rate=0.2, seed=6)
    kw = dict(decay_pre=0.9, decay_post=0.8, a_minus=1.05)
    want = stdp_update(s_pre, s_post, **kw)
    got = stdp_update(s_pre.float(), s_post.float(), **kw)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_row_weights_equal_weighted_loop(ref):
    s_pre, s_post = ref.random_spikes((2, 15, 3), seed=7), ref.random_spikes((2, 15, 2), seed=8)
    w = torch.randn(2, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    want = ref.stdp_loop(s_pre, s_post, 0.5, 0.6, row_weight=w)
    got = stdp_update(s_pre, s_post, decay_pre=0.5, decay_post=0.6, row_weight=w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_batch_reduction_is_mean_over_sequences(ref):
    s_pre, s_post = ref.random_spikes((2, 10, 3), seed=10), ref.random_spikes((2, 10, 2), seed=11)
    kw = dict(decay_pre=0.5, decay_post=0.5)
    one = stdp_update(s_pre, s_post, **kw)
    twice = stdp_update(s_pre.repeat(2, 1, 1), s_post.repeat(2, 1, 1), **kw)
    torch.testing.assert_close(one, twice)  # batch size does not change the rate
    torch.testing.assert_close(stdp_update(s_pre, s_post, reduction="sum", **kw), 2 * one)


def test_padding_does_not_change_the_update(ref):
    s_pre, s_post = ref.random_spikes((1, 12, 3), seed=12), ref.random_spikes((1, 12, 2), seed=13)
    junk_pre, junk_post = torch.ones(1, 4, 3, dtype=torch.float64), torch.ones(1, 4, 2, dtype=torch.float64)
    pad_pre, pad_post = torch.cat([junk_pre, s_pre, junk_pre], 1), torch.cat([junk_post, s_post, junk_post], 1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 12), torch.zeros(1, 4)], 1).bool()
    kw = dict(decay_pre=0.6, decay_post=0.7)
    torch.testing.assert_close(stdp_update(pad_pre, pad_post, mask=mask, **kw), stdp_update(s_pre, s_post, **kw))


def test_document_boundaries_separate_documents(ref):
    # A packed row of two documents with a reset at the boundary = the sum of the two documents' updates.
    a_pre, a_post = ref.random_spikes((1, 7, 3), seed=14), ref.random_spikes((1, 7, 2), seed=15)
    b_pre, b_post = ref.random_spikes((1, 9, 3), seed=16), ref.random_spikes((1, 9, 2), seed=17)
    reset = torch.zeros(1, 16, dtype=torch.bool)
    reset[0, 7] = True
    kw = dict(decay_pre=0.9, decay_post=0.9)
    packed = stdp_update(torch.cat([a_pre, b_pre], 1), torch.cat([a_post, b_post], 1), reset=reset, **kw)
    separate = stdp_update(a_pre, a_post, **kw) + stdp_update(b_pre, b_post, **kw)
    torch.testing.assert_close(packed, separate)
    unreset = stdp_update(torch.cat([a_pre, b_pre], 1), torch.cat([a_post, b_post], 1), **kw)
    assert not torch.allclose(unreset, separate)


@pytest.mark.parametrize("inclusive", [True, False])
def test_streaming_with_carried_traces_equals_whole_sequence(ref, inclusive):
    # A long document processed in two calls: carry the inclusive traces, sum the two ΔW.
    s_pre, s_post = ref.random_spikes((2, 30, 4), seed=18), ref.random_spikes((2, 30, 3), seed=19)
    reset, mask = ref.random_flags((2, 30), 0.1, seed=20), ref.random_flags((2, 30), 0.85, seed=21)
    kw = dict(a_plus=1.2, a_minus=0.9)
    whole = stdp_update(s_pre, s_post, decay_pre=0.8, decay_post=0.6, reset=reset, mask=mask, inclusive=inclusive, **kw)
    total, carry_pre, carry_post = 0, None, None
    for part in (slice(0, 11), slice(11, 30)):
        sp, so, r, m = s_pre[:, part], s_post[:, part], reset[:, part], mask[:, part]
        x_pre = trace_scan(sp, 0.8, reset=r, mask=m, initial=carry_pre)
        x_post = trace_scan(so, 0.6, reset=r, mask=m, initial=carry_post)
        carry_pre, carry_post = x_pre[:, -1], x_post[:, -1]
        if not inclusive:  # the exclusive trace is the inclusive one minus the (unmasked) spike at t
            x_pre, x_post = x_pre - sp * m[..., None], x_post - so * m[..., None]
        total = total + stdp_delta(sp, x_pre, so, x_post, mask=m, **kw)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-12)
    ltp, ltd = stdp_terms(s_pre, trace_scan(s_pre, 0.8), s_post, trace_scan(s_post, 0.6))
    torch.testing.assert_close(
        stdp_delta(s_pre, trace_scan(s_pre, 0.8), s_post, trace_scan(s_post, 0.6), **kw), 1.2 * ltp - 0.9 * ltd
    )


def test_bad_inputs_are_named():
    s = torch.ones(2, 5, 3)
    with pytest.raises(ValueError, match="reduction"):
        stdp_update(s, s, decay_pre=0.5, decay_post=0.5, reduction="max")
    with pytest.raises(ValueError, match="s_pre = x_pre"):
        stdp_terms(s, s, torch.ones(2, 4, 3), torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match=r"s_pre_t must be \[B, in\]"):
        stdp_online_step(s, s, s, s, decay_pre=0.5, decay_post=0.5)
    with pytest.raises(ValueError, match="row_weight"):
        stdp_update(s, s, decay_pre=0.5, decay_post=0.5, row_weight=torch.ones(3, 5))
