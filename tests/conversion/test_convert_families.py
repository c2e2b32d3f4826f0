"""Every tiny family converts at every coverage level, stays a working transformers model, and approaches the ANN."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel

from hybridtune.conversion import (
    ConversionConfig,
    SpikingAttention,
    SpikingMoE,
    ThresholdNorm,
    conversion_info,
    convert,
)
from hybridtune.neurons import GradedNeuron, RateCodedIF, SpikingLinear
from hybridtune.testing import FAMILIES, tiny_batch, tiny_model

COVERAGES = [
    ("ffn_act",),
    ("ffn_act", "linear_inputs"),
    ("ffn_act", "linear_inputs", "attention"),
    ("ffn_act", "linear_inputs", "attention", "norms"),
    ("linear_inputs", "norms"),
]
CALIB = torch.randint(3, 256, (256,), generator=torch.Generator().manual_seed(0))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("coverage", COVERAGES, ids="+".join)
def test_converts_runs_with_labels_and_generates(family, coverage):
    batch = tiny_batch()
    snn = convert(tiny_model(family), ConversionConfig(coverage=coverage, compensation=False))
    assert isinstance(snn, PreTrainedModel)
    assert not any(p.requires_grad for p in snn.parameters())
    out = snn(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, 16, 256) and torch.isfinite(out.loss)
    gen = snn.generate(batch["input_ids"][:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 8)
    assert conversion_info(snn).family == snn.config.model_type


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("coverage", [COVERAGES[0], COVERAGES[3], COVERAGES[4]], ids="+".join)
def test_fine_resolution_approaches_the_ann(family, coverage):
    batch = tiny_batch()
    ann = _logits(tiny_model(family), batch)
    # unbounded counts (phases=None): the limit of ever finer resolution, which a bounded code cannot reach
    unbounded = ConversionConfig(coverage=coverage, phases=None, compensation=False)
    coarse = _logits(convert(tiny_model(family), unbounded.with_(divisor=2.0)), batch)
    fine = _logits(convert(tiny_model(family), unbounded.with_(divisor=1e5)), batch)
    err_fine, err_coarse = (fine - ann).abs().max().item(), (coarse - ann).abs().max().item()
    assert err_fine < 1e-3, err_fine
    assert err_fine < err_coarse / 50


@pytest.mark.parametrize("family", FAMILIES)
def test_static_thresholds_with_compensation_convert_and_stay_close(family):
    batch = tiny_batch()
    cfg = ConversionConfig(threshold="static", threshold_mode="rms", divisor=16.0, compensation=True,
                           calib_tokens=256, calib_block=64)
    snn = convert(tiny_model(family), cfg, calib=CALIB)
    state = conversion_info(snn).state
    assert state and all("theta" in v for k, v in state.items() if not k.endswith("act_fn"))
    assert any("residual" in v for v in state.values())
    err = (_logits(snn, batch) - _logits(tiny_model(family), batch)).abs().max().item()
    assert err < 0.5


def test_llama_sites_and_module_types():
    snn = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"), compensation=False))
    layer = snn.model.layers[0]
    q = layer.self_attn.q_proj
    assert isinstance(q, SpikingLinear) and q.encoder is None and q.hybridtune_spike_input
    assert isinstance(layer.self_attn.o_proj.encoder, GradedNeuron)
    assert isinstance(layer.input_layernorm.hybridtune_encoder, GradedNeuron)
    # one shared encoder drives q, k and v: its fan-out is the sum of their outputs
    assert layer.input_layernorm.hybridtune_encoder.fan_out == 64 + 32 + 32
    assert layer.mlp.act_fn.hybridtune_encoder.fan_out == 1
    assert isinstance(layer.self_attn.hybridtune_attention, SpikingAttention)
    assert isinstance(snn.lm_head, SpikingLinear) and snn.lm_head.encoder is None
    assert type(layer.input_layernorm).__name__ == "LlamaRMSNorm"  # the norm keeps its class and parameter names
    names = {n for n, _ in snn.named_parameters()}
    assert names == {n for n, _ in tiny_model("llama").named_parameters()}
    plan = conversion_info(snn).plan
    assert len(plan.sites) == 2 * 5 + 1 and len(plan.attention) == 2
    assert any("softmax" in note for note in plan.float_notes)


def test_gpt2_activation_spikes_feed_c_proj_and_conv1d_is_transposed():
    model = tiny_model("gpt2")
    snn = convert(tiny_model("gpt2"), ConversionConfig(coverage=("ffn_act",), compensation=False))
    c_proj = snn.transformer.h[0].mlp.c_proj
    assert isinstance(c_proj, SpikingLinear) and c_proj.encoder is None
    assert torch.equal(c_proj.weight, model.transformer.h[0].mlp.c_proj.weight.t())
    assert snn.transformer.h[0].mlp.act.hybridtune_encoder.fan_out == c_proj.out_features


def test_llama4_moe_becomes_sparse_spiking_moe():
    snn = convert(tiny_model("llama4"), ConversionConfig(compensation=False))
    moes = [m for m in snn.modules() if isinstance(m, SpikingMoE)]
    assert len(moes) == 1 and moes[0].act_encoder is not None and moes[0].down_encoder is not None
    assert moes[0].router.hybridtune_spike_input
    snn(**tiny_batch())
    assert moes[0].routed_rows == 32  # top-1 of 4 experts: one routed row per token


def test_norms_become_threshold_norms():
    snn = convert(tiny_model("gemma3"), ConversionConfig(coverage=("linear_inputs", "norms"), compensation=False))
    layer = snn.model.layers[0]
    assert isinstance(layer.input_layernorm, ThresholdNorm)
    assert isinstance(layer.pre_feedforward_layernorm, ThresholdNorm)
    assert not isinstance(layer.post_feedforward_layernorm, ThresholdNorm)  # feeds no linear: stays float
    from hybridtune.models import model_fingerprint

    assert model_fingerprint(snn) == model_fingerprint(tiny_model("gemma3")) == conversion_info(snn).base_fingerprint


def test_rate_coded_if_improves_with_timesteps():
    batch = tiny_batch()
    ann = _logits(tiny_model("llama"), batch)
    errs = []
    for t in (2, 8, 64):
        cfg = ConversionConfig(neuron="if", timesteps=t, threshold="static", threshold_mode="max_abs", divisor=1.0,
                               counting="unary", calib_tokens=256, calib_block=64, compensation=False)
        snn = convert(tiny_model("llama"), cfg, calib=CALIB)
        assert isinstance(snn.model.layers[0].self_attn.o_proj.encoder, RateCodedIF)
        errs.append((_logits(snn, batch) - ann).abs().mean().item())
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("softmax", ["keep", "nrelu", "spike"])
def test_attention_variants_run_and_cache_matches_full_forward(softmax):
    cfg = ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"), softmax=softmax, compensation=False)
    snn = convert(tiny_model("qwen3"), cfg)
    ids = tiny_batch()["input_ids"][:1]
    with torch.no_grad():
        full = snn(input_ids=ids).logits
        out = snn(input_ids=ids[:, :10], use_cache=True)
        step = snn(input_ids=ids[:, 10:11], cache=out.past_key_values, use_cache=True).logits
    assert torch.isfinite(full).all()
    torch.testing.assert_close(step[:, -1], full[:, 10], atol=1e-4, rtol=1e-4)


def test_converting_twice_is_refused():
    snn = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act",), compensation=False))
    with pytest.raises(ValueError, match="already converted"):
        convert(snn, ConversionConfig(compensation=False))


def test_calibration_needed_but_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="calib"):
        convert(tiny_model("llama"), ConversionConfig(threshold="static", compensation=False))
