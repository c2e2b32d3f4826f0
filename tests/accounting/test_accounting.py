"""Golden accounting on hand-built nets, report totals against a direct count, census of an ANN, JSON + PNG."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hybridtune.accounting import (
    CONVENTIONS,
    breakeven_spikes_per_neuron,
    count_ops,
    count_spikes,
    energy_pj,
    energy_ratio,
    energy_report,
    format_report,
    layer_of,
    load_report,
    write_report,
)
from hybridtune.conversion import ConversionConfig, convert
from hybridtune.neurons import GradedNeuron, SpikeStats, SpikingLinear, StaticThreshold, spike_count
from hybridtune.testing import tiny_batch, tiny_model


def _hand_net(counting: str) -> nn.Module:
    linear = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
    return nn.Sequential(SpikingLinear.from_linear(linear, GradedNeuron(StaticThreshold(torch.tensor(1.0)),
                                                                        counting=counting)))


@pytest.mark.parametrize(("counting", "spikes"), [("unary", 4.0), ("base2", 3.0)])
def test_golden_values_on_a_hand_built_net(counting, spikes):
    # input [3.2, 0.1, -1.0] -> counts [3, 0, -1]: unary 3 + 1 = 4 spikes; base2 popcount(3) + popcount(1) = 3
    report = energy_report(_hand_net(counting), inputs=torch.tensor([[3.2, 0.1, -1.0]]))
    t = report["total"]
    assert t["spikes"] == spikes and t["neuron_steps"] == 3 and t["silent_share"] == pytest.approx(1 / 3)
    assert t["sops"] == spikes * 2  # fan-out 2
    assert t["ann_macs"] == 6 and t["float_macs"] == 0 and t["spike_driven_share"] == 1.0
    fp32 = t["energy"]["fp32_45nm"]
    assert fp32["snn_pj"] == pytest.approx(spikes * 2 * 0.9)
    assert fp32["ann_pj"] == pytest.approx(6 * 4.6)
    assert fp32["ratio"] == pytest.approx(6 * 4.6 / (spikes * 2 * 0.9), rel=1e-5)
    assert t["energy"]["int8"]["ratio"] == pytest.approx(6 * 0.23 / (spikes * 2 * 0.03), rel=1e-5)


def test_energy_functions_golden():
    assert energy_pj(10, 2, 1, "fp32_45nm") == pytest.approx(10 * 0.9 + 2 * 4.6 + 0.9)
    assert energy_pj(10, 2, 1, "int8") == pytest.approx(10 * 0.03 + 2 * 0.23 + 0.03)
    assert energy_ratio(100, 0, 200, 0, 0, "fp32_45nm") == pytest.approx(460 / 180)
    assert breakeven_spikes_per_neuron("int8") == pytest.approx(0.23 / 0.03)
    assert set(CONVENTIONS) == {"fp32_45nm", "int8"}
    with pytest.raises(ValueError, match="fp32_45nm"):
        energy_pj(1, 1, 1, "fp16")


def test_count_spikes_restores_previous_stats():
    neuron = GradedNeuron(StaticThreshold(torch.tensor(1.0)))
    before = SpikeStats(spikes=5.0)
    neuron.stats = before
    with count_spikes(nn.Sequential(neuron)) as stats:
        neuron(torch.tensor([2.0]))
    assert stats["0"].spikes == 2.0 and neuron.stats is before and before.spikes == 5.0


def _direct_counts(model, batch):
    """Spikes and neuron-steps recomputed from every graded neuron's input with the pure functions."""
    totals = {"spikes": 0.0, "steps": 0}

    def hook(module, args, out):
        q, _ = module.quantize(args[0])
        totals["spikes"] += float(spike_count(q, module.counting).sum())
        totals["steps"] += q.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, GradedNeuron)]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return totals


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama4"])
def test_report_spike_counts_equal_a_direct_count(family):
    snn = convert(tiny_model(family), ConversionConfig(coverage=("ffn_act", "linear_inputs", "norms"), compensation=False))
    batch = tiny_batch()
    direct = _direct_counts(snn, batch)
    report = energy_report(snn, batch["input_ids"], batch_size=2)
    assert report["total"]["spikes"] == pytest.approx(direct["spikes"])
    assert report["total"]["neuron_steps"] == direct["steps"]
    # spike-driven ANN MACs equal the dense work of every encoder: neuron-steps x fan-out
    dense = sum(snn.get_submodule(n).fan_out * s["neuron_steps"] for n, s in report["encoders"].items())
    assert report["total"]["spike_driven_macs"] == pytest.approx(dense)


def test_census_of_an_ann_counts_linears_and_attention_exactly():
    model = tiny_model("llama")  # hidden 64, 4 heads x 16, 2 kv heads, intermediate 128, 2 layers, vocab 256
    ids = tiny_batch()["input_ids"]  # [2, 16]
    with count_ops(model) as census, torch.no_grad():
        model(input_ids=ids)
    per_token_linear = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 64 * 256
    linear = sum(rec.ann_mac for (layer, op), rec in census.ops.items() if op.startswith("linear") or op == "lm_head")
    assert linear == 32 * per_token_linear
    pairs = 2 * (16 * 17 // 2)  # causal triangle per sequence, two sequences
    qk = sum(rec.ann_mac for (layer, op), rec in census.ops.items() if op == "attention_qk")
    assert qk == 2 * 4 * pairs * 16
    totals = census.totals()
    assert totals["ann_mac"] == totals["snn_mac"] and totals["spike_driven_mac"] == 0
    report = energy_report(model, ids)
    assert report["total"]["energy"]["fp32_45nm"]["ratio"] == pytest.approx(1.0)


def test_spiking_attention_moves_matmuls_to_sops():
    cov = ("ffn_act", "linear_inputs")
    base = energy_report(convert(tiny_model("llama"), ConversionConfig(coverage=cov, compensation=False)), tiny_batch()["input_ids"])
    attn = energy_report(convert(tiny_model("llama"), ConversionConfig(coverage=(*cov, "attention"), compensation=False)),
                         tiny_batch()["input_ids"])
    assert "attention_qk" in base["float_ops"] and "attention_qk" not in attn["float_ops"]
    assert "attention_qk" in attn["spike_driven_ops"]
    assert attn["total"]["spike_driven_share"] > base["total"]["spike_driven_share"]
    assert "softmax" in attn["float_ops"]


def test_layer_labels():
    assert layer_of("model.layers.3.mlp.down_proj.encoder") == "3"
    assert layer_of("transformer.h.11.attn") == "11"
    assert layer_of("lm_head") == "head" and layer_of("transformer.ln_f") == "head"
    assert layer_of("model.embed_tokens") == "embed"


def test_write_report_json_and_pngs(tmp_path):
    snn = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    report = energy_report(snn, tiny_batch()["input_ids"])
    report["points"] = [{"spikes_per_neuron": 1.8, "ppl_ratio": 1.01, "label": "/8"},
                        {"spikes_per_neuron": 2.2, "ppl_ratio": 1.001, "label": "/16"}]
    written = write_report(report, tmp_path)
    assert set(written) == {"json", "firing_rate", "ppl_vs_spikes"}
    assert (tmp_path / "firing_rate.png").stat().st_size > 1000
    loaded = load_report(tmp_path)
    assert loaded["total"]["spikes"] == report["total"]["spikes"]
    assert "not modelled" in loaded["not_modelled"] and json.dumps(loaded)
    assert report["stays_float"] and report["conversion"]["family"] == "llama"
    text = format_report(loaded)
    assert "spikes/neuron" in text and "not modelled" in text
    with pytest.raises(FileNotFoundError, match="report.json"):
        load_report(tmp_path / "missing")


def test_write_report_without_plots(tmp_path):
    report = energy_report(_hand_net("unary"), inputs=torch.tensor([[1.0, 2.0, 0.0]]))
    assert set(write_report(report, tmp_path, plot=False)) == {"json"}


def test_norms_with_encoded_outputs_are_still_counted():
    ids = tiny_batch()["input_ids"]
    ann = energy_report(tiny_model("llama"), ids)["float_ops"]["norm"]["macs"]
    snn = energy_report(convert(tiny_model("llama"), ConversionConfig(compensation=False)), ids)["float_ops"]["norm"]["macs"]
    assert snn == ann == 3 * 32 * 64 * (2 * 2 + 1)  # 2 norms per layer + the final norm, 3 MACs per element


def test_int_convention_same_width_and_wide_accumulators():
    from hybridtune.accounting import int_convention

    eight = int_convention(8, accumulator_bits=8)
    assert eight.ac_pj == pytest.approx(0.03) and eight.mac_pj == pytest.approx(0.23)  # the INT8 convention
    nine = int_convention(9)
    assert nine.name == "int9_acc32" and nine.ac_pj == pytest.approx(0.1)
    assert nine.mac_pj == pytest.approx(0.2 * 9 * 8 / 64 + 0.1)
    assert int_convention(5).mac_pj < nine.mac_pj
    with pytest.raises(ValueError, match="bit widths"):
        int_convention(0)
