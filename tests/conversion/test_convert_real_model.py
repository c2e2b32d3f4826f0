"""A few checks on the embedded default model (SmolLM2-135M), 128 tokens each."""

from __future__ import annotations

import copy

import pytest
import torch

from hybridtune.accounting import energy_report
from hybridtune.conversion import ConversionConfig, convert, load_spiking, save_spiking

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def tokens(default_tokenizer):
    from hybridtune.data import corpus, pack

    return pack(default_tokenizer, corpus("python-docs").documents("eval"), 128, max_tokens=128).input_ids


def _nll(model, ids):
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_default_model_ffn_and_linear_inputs_stay_close_at_under_two_spikes(default_model, tokens):
    ann_nll = _nll(default_model, tokens)
    snn = convert(copy.deepcopy(default_model), ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    ratio = torch.exp(torch.tensor(_nll(snn, tokens) - ann_nll)).item()
    assert ratio < 1.06, ratio
    report = energy_report(snn, tokens)
    total = report["total"]
    assert 1.0 < total["spikes_per_neuron"] < 2.0
    assert total["energy"]["fp32_45nm"]["ratio"] > 2.0
    assert "attention_qk" in report["float_ops"]  # attention stays float at this coverage, and says so


def test_default_model_save_load_round_trip(default_model, tokens, tmp_path):
    cfg = ConversionConfig(threshold="static", threshold_mode="mean_abs", divisor=8.0, compensation=True,
                           calib_tokens=256, calib_block=128)
    calib = torch.arange(1000, 1256)  # any deterministic token ids will do for a round trip
    snn = convert(copy.deepcopy(default_model), cfg, calib=calib)
    path = save_spiking(snn, tmp_path / "snn")
    again = load_spiking(copy.deepcopy(default_model), path)
    with torch.no_grad():
        assert torch.equal(again(input_ids=tokens[:, :64]).logits, snn(input_ids=tokens[:, :64]).logits)


def test_default_model_full_coverage_runs_and_names_what_stays_float(default_model, tokens):
    cfg = ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention", "norms"), compensation=False)
    snn = convert(copy.deepcopy(default_model), cfg)
    assert torch.isfinite(torch.tensor(_nll(snn, tokens)))
    report = energy_report(snn, tokens)
    assert report["total"]["spike_driven_share"] > 0.99
    assert "softmax" in report["float_ops"] and any("softmax" in s for s in report["stays_float"])
