"""The softmax replacements: registry, golden values at initialisation, masking, cache decode, census charges,
conversion-state round trip and the config's validation."""

from __future__ import annotations

import math

import pytest
import torch

from hybridtune.accounting import energy_report
from hybridtune.config import ConfigError, load_config
from hybridtune.config.conversion import RECOVERABLE_SOFTMAX, SOFTMAX
from hybridtune.conversion import ConversionConfig, conversion_info, convert, load_spiking, save_spiking
from hybridtune.conversion.attention import (
    NORMALISATIONS,
    RECOVERABLE,
    SOFTMAX_MODES,
    SpikingAttention,
    log_partition_offset,
)
from hybridtune.recovery import record_replacements
from hybridtune.testing import tiny_batch, tiny_model

ATTN = ("ffn_act", "linear_inputs", "attention")


def _probs(name: str, scores: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    spec = SpikingAttention(name, torch.nn.Identity(), torch.nn.Identity(), heads=scores.shape[1])
    n = visible.sum(-1, keepdim=True).clamp(min=1) if visible is not None else scores.shape[-1]
    return spec.norm.probabilities(scores, visible, n, spec.params)


def test_registry_matches_the_config_choices():
    assert SOFTMAX_MODES == SOFTMAX and RECOVERABLE == RECOVERABLE_SOFTMAX
    assert {n: s.recoverable for n, s in NORMALISATIONS.items()} == {
        "keep": False, "nrelu": False, "spike": False, "relu_count": True, "relu_sum": True, "sigmoid": True,
        "relu_knots": True, "relu_knots_max": True}


def test_initial_values_golden():
    # uniform scores: softmax gives 1/n; relu_count's (1 + s) / n is exact there, sigmoid(-log n) = 1 / (n + 1)
    scores = torch.zeros(1, 2, 1, 4)
    torch.testing.assert_close(_probs("relu_count", scores), torch.full_like(scores, 0.25))
    torch.testing.assert_close(_probs("sigmoid", scores), torch.full_like(scores, 0.2))
    s = torch.tensor([0.5, -0.2, 0.1, -2.0]).view(1, 1, 1, 4)
    torch.testing.assert_close(_probs("relu_count", s).flatten(), torch.tensor([1.5, 0.8, 1.1, 0.0]) / 4)
    expected = torch.sigmoid(torch.tensor([0.5, -0.2, 0.1, -2.0]) - math.log(4))
    torch.testing.assert_close(_probs("sigmoid", s).flatten(), expected)
    torch.testing.assert_close(_probs("relu_sum", s).flatten(), torch.tensor([0.5, 0.0, 0.1, 0.0]) / 0.6)
    torch.testing.assert_close(_probs("relu_sum", s), _probs("nrelu", s))  # nrelu at its initial values


def test_closed_form_fit_removes_the_mean_log_partition_offset():
    """With the fitted bias, a row whose log-partition offset equals the mean gets softmax's value for small x."""
    scores = torch.linspace(-0.4, 0.6, 64).view(1, 1, 1, 64)
    total, rows = log_partition_offset(scores, None, 64)
    offset = total / rows
    torch.testing.assert_close(offset, torch.logsumexp(scores.flatten(), 0).view(1) - math.log(64))
    softmax = torch.softmax(scores, -1)
    for name, tol in (("sigmoid", 0.03), ("relu_count", 0.25)):  # relative: e^x ~ 1 + x (|x| < 0.6); sigmoid ~ e^x
        spec = SpikingAttention(name, torch.nn.Identity(), torch.nn.Identity(), heads=1)
        with torch.no_grad():
            for k, v in spec.norm.fitted_parameters(offset).items():
                spec.params[k].copy_(v)
        probs = spec.norm.probabilities(scores, None, 64, spec.params)
        torch.testing.assert_close(probs, softmax, atol=0, rtol=tol)


@pytest.mark.parametrize("name", RECOVERABLE)
def test_masked_keys_get_zero_and_rows_see_only_visible_keys(name):
    scores = torch.randn(2, 3, 5, 5)
    visible = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    p = _probs(name, scores, visible)
    assert (p >= 0).all() and (p[..., ~visible[0, 0]] == 0).all()
    # the first query sees one key: its probability depends on that score and n = 1 only
    single = _probs(name, scores[..., :1, :1])
    torch.testing.assert_close(p[..., :1, :1], single)


def test_recoverable_needs_heads_and_has_per_head_parameters():
    with pytest.raises(ValueError, match="heads"):
        SpikingAttention("sigmoid", torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(ValueError, match="relu_count"):
        SpikingAttention("softmax2", torch.nn.Identity(), torch.nn.Identity())
    spec = SpikingAttention("relu_count", torch.nn.Identity(), torch.nn.Identity(), heads=4)
    assert {k: tuple(p.shape) for k, p in spec.params.items()} == {"tau": (4,), "bias": (4,), "gain": (4,)}
    assert not any(p.requires_grad for p in spec.params.values())


@pytest.mark.parametrize("name", RECOVERABLE)
def test_cached_decode_matches_full_forward(name):
    snn = convert(tiny_model("qwen3"), ConversionConfig(coverage=ATTN, softmax=name, compensation=False))
    ids = tiny_batch()["input_ids"][:1]
    with torch.no_grad():
        full = snn(input_ids=ids).logits
        out = snn(input_ids=ids[:, :10], use_cache=True)
        step = snn(input_ids=ids[:, 10:11], cache=out.past_key_values, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], full[:, 10], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,macs,adds", [("keep", 2, 1), ("nrelu", 1, 1), ("spike", 1, 0), ("relu_count", 2, 1),
                                            ("relu_sum", 2, 2), ("sigmoid", 3, 1),
                                            ("relu_knots", 9, 9), ("relu_knots_max", 9, 10)])
def test_census_charges_the_float_normalisation(name, macs, adds):
    snn = convert(tiny_model("llama"), ConversionConfig(coverage=ATTN, softmax=name, compensation=False))
    ids = tiny_batch()["input_ids"]
    op = energy_report(snn, ids)["float_ops"]["softmax"]
    # 2 layers x 4 heads x 2 sequences x the causal triangle of 16 tokens
    pairs = 2 * 4 * 2 * (16 * 17 // 2)
    assert op == {"macs": macs * pairs, "acs": adds * pairs}
    notes = conversion_info(snn).plan.float_notes
    assert any(NORMALISATIONS[name].float_note == n for n in notes)


def test_trained_parameters_are_saved_fingerprinted_and_loaded(tmp_path):
    from hybridtune.adapters.model import conversion_fingerprint
    from hybridtune.models import model_fingerprint

    cfg = ConversionConfig(coverage=ATTN, softmax="relu_count", compensation=False)
    snn = convert(tiny_model("llama"), cfg)
    fingerprint, base = conversion_fingerprint(snn), model_fingerprint(snn)
    spec = snn.model.layers[1].self_attn.hybridtune_attention
    with torch.no_grad():
        spec.params["tau"].mul_(1.5)
        spec.params["bias"].add_(-0.25)
    record_replacements(snn)
    assert conversion_fingerprint(snn) != fingerprint and model_fingerprint(snn) == base
    save_spiking(snn, tmp_path / "snn")
    again = load_spiking(tiny_model("llama"), tmp_path / "snn")
    loaded = again.model.layers[1].self_attn.hybridtune_attention.params
    assert all(torch.equal(loaded[k], spec.params[k]) for k in spec.params)
    assert conversion_fingerprint(again) == conversion_fingerprint(snn)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, snn(**batch).logits)


def test_config_names_the_key_and_the_valid_values():
    attention = "conversion.coverage=[ffn_act,linear_inputs,attention]"
    with pytest.raises(ConfigError, match=r"conversion\.softmax.*'relu_count', 'relu_sum', 'sigmoid'"):
        load_config(None, [attention, "conversion.softmax=relu"])
    with pytest.raises(ConfigError, match=r"conversion\.softmax.*add 'attention'"):
        load_config(None, ["conversion.softmax=sigmoid"])
    with pytest.raises(ConfigError, match=r"recovery\.stage1_steps.*relu_count, relu_sum, sigmoid"):
        load_config(None, [attention, "conversion.softmax=nrelu", "recovery.stage1_steps=10"])
    for override, key in (("recovery.stage1_lr=0", "stage1_lr"), ("recovery.stage1_steps=-1", "stage1_steps"),
                          ("recovery.stage1_batch_size=0", "stage1_batch_size"), ("recovery.eval_every=0",
                                                                                 "eval_every")):
        with pytest.raises(ConfigError, match=rf"recovery\.{key}"):
            load_config(None, [override])
    cfg = load_config(None, [attention, "conversion.softmax=sigmoid", "recovery.stage1_steps=10"])
    assert cfg.recovery.stage1_steps == 10 and cfg.conversion.softmax == "sigmoid"


def test_relu_knots_starts_as_the_interpolant_of_exp():
    """At its knots f equals exp minus its value at the first knot (the interpolant through them, shifted to 0 below
    the first), so its rows approach softmax where the scores lie between the knots; a fit moves the knots with the
    head's log-partition offset."""
    spec = SpikingAttention("relu_knots", torch.nn.Identity(), torch.nn.Identity(), heads=2)
    knots = spec.params["knots"]
    assert tuple(knots.shape) == (2, 8) and (spec.params["log_slope"].exp() > 0).all()
    at = knots[:1, :, None, None].permute(2, 0, 3, 1).expand(1, 2, 1, 8)  # the first head's knots as one row of scores
    probs = spec.norm.probabilities(at, None, 8, spec.params)[0, 0, 0]
    f = knots[0].exp() - knots[0, 0].exp()
    torch.testing.assert_close(probs, f / f.sum(), rtol=1e-5, atol=1e-7)
    scores = torch.linspace(-1.0, 2.0, 32).view(1, 1, 1, 32).expand(1, 2, 1, 32)
    torch.testing.assert_close(spec.norm.probabilities(scores, None, 32, spec.params), torch.softmax(scores, -1),
                               atol=0, rtol=0.2)
    fitted = spec.norm.fitted_parameters(torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(fitted["knots"][1] - fitted["knots"][0], torch.full((8,), 1.5))


def test_relu_knots_max_is_shift_invariant_and_starts_near_softmax():
    """Shifting a row's scores together changes nothing (as for softmax; relu_knots does change); at its initial
    knots each row is within the interpolant's error of softmax, sink-like rows far above the rest included."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 5, 40, generator=gen) * 2.0
    scores[0, :, :, 0] += 12.0  # an attention-sink-like key
    p = _probs("relu_knots_max", scores)
    torch.testing.assert_close(_probs("relu_knots_max", scores + 7.5), p)
    assert not torch.allclose(_probs("relu_knots", scores + 7.5), _probs("relu_knots", scores), atol=1e-3)
    torch.testing.assert_close(p, torch.softmax(scores, -1), atol=0.03, rtol=0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 5))
    visible = torch.ones(1, 1, 5, 40, dtype=torch.bool).tril(diagonal=35)
    masked = _probs("relu_knots_max", scores, visible)
    assert (masked[..., ~visible[0, 0]] == 0).all() and torch.isfinite(masked).all()
    spec = SpikingAttention("relu_knots_max", torch.nn.Identity(), torch.nn.Identity(), heads=3)
    fitted = spec.norm.fitted_parameters(torch.tensor([0.0, 1.5, -2.0]))
    assert all(torch.equal(fitted[k], spec.params[k].data) for k in fitted)  # the offset does not move it


def test_clip_free_floors_the_attention_thresholds():
    """With clip_free (the default outlier strategy of a bounded code) a peaky probability row keeps its largest
    entry instead of saturating at 2**K - 1; without it the row's top entry is clipped."""
    from hybridtune.conversion.attention import _quantize_rows
    from hybridtune.neurons import ClipFreeThreshold

    probs = torch.full((1, 1, 1, 200), 0.1 / 199)
    probs[..., 0] = 0.9  # 0.9 / (mean / 8) = 1440 > 255
    cfg = ConversionConfig(coverage=ATTN, phases=8, compensation=False)
    snn = convert(tiny_model("llama"), cfg)
    spec = snn.model.layers[0].self_attn.hybridtune_attention
    assert isinstance(spec.p_encoder.threshold, ClipFreeThreshold)
    assert isinstance(spec.q_encoder.threshold, ClipFreeThreshold)
    counts, theta = _quantize_rows(spec.p_encoder, probs, None)
    assert int(counts.max()) == 255 and float((counts * theta)[..., 0].sum()) == pytest.approx(0.9, rel=1 / 255)
    clipped = convert(tiny_model("llama"), ConversionConfig(coverage=ATTN, phases=8, compensation=False,
                                                            outliers=()))
    enc = clipped.model.layers[0].self_attn.hybridtune_attention.p_encoder
    counts, theta = _quantize_rows(enc, probs, None)
    assert int(counts.max()) == 255 and float((counts * theta)[..., 0].sum()) < 0.2
