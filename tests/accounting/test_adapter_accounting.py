"""Accounting of spiking LoRA layers: their fused op bypasses the base layer's forward, so the census counts them."""

from __future__ import annotations

import pytest
import torch

from hybridtune.accounting import count_ops, energy_report
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.conversion import ConversionConfig, convert
from hybridtune.testing import tiny_batch, tiny_model

RANK = 4


def _adapted(targets: list[str], neuron: str = "heaviside"):
    torch.manual_seed(0)
    snn = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    cfg = spiking_lora_config(r=RANK, neuron=neuron, threshold=0.02, target_modules=targets)
    return get_spiking_peft_model(snn, cfg)  # lora_B starts at zero: the adapters change no activation


def _census(model, ids):
    with torch.no_grad(), count_ops(model) as census:
        model(input_ids=ids)
    return census


@pytest.mark.parametrize("neuron", ["heaviside", "mt", "lif"])
def test_adapter_layers_are_counted_once_with_their_factors(neuron):
    ids = tiny_batch()["input_ids"]
    model = _adapted(["q_proj", "down_proj"], neuron)
    with model.disable_adapter():
        plain = _census(model, ids)
    adapted = _census(model, ids)
    tokens = ids.numel()
    layers = len(model.base_model.model.model.layers)
    cfg = model.base_model.model.config
    h, i = cfg.hidden_size, cfg.intermediate_size
    extra_macs = tokens * RANK * ((h + h) + (i + h)) * layers  # q_proj: h -> h; down_proj: i -> h
    assert adapted.totals()["ann_mac"] - plain.totals()["ann_mac"] == pytest.approx(extra_macs)
    # the base linears are there in both, exactly once
    for op in ("linear:q_proj", "linear:down_proj"):
        with_a = sum(rec.ann_mac for (_, o), rec in adapted.ops.items() if o == op)
        without = sum(rec.ann_mac for (_, o), rec in plain.ops.items() if o == op)
        assert with_a == without > 0
    # every factor MAC is spike-driven: the base inputs are spikes and so are the bottleneck outputs
    assert adapted.totals()["snn_mac"] == pytest.approx(plain.totals()["snn_mac"])
    assert adapted.totals()["snn_ac"] - plain.totals()["snn_ac"] == pytest.approx(tokens * (h + h) * layers)


def test_adapter_sops_are_input_spikes_times_rank_plus_bottleneck_spikes_times_fan_out():
    ids = tiny_batch()["input_ids"]
    model = _adapted(["q_proj", "down_proj"])
    with model.disable_adapter():
        plain = _census(model, ids)
    adapted = _census(model, ids)
    h = model.base_model.model.config.hidden_size
    feeding = [n for n in adapted.stats if n.endswith(("input_layernorm.hybridtune_encoder",
                                                                 "down_proj.base_layer.encoder"))]
    assert len(feeding) == 2 * len(model.base_model.model.model.layers)
    input_spikes = sum(adapted.stats[n].spikes for n in feeding)
    bottleneck = {n: s for n, s in adapted.stats.items() if n.split(".")[-2] == "lora_neuron"}
    assert len(bottleneck) == len(feeding) and all(s.neuron_steps == ids.numel() * RANK for s in bottleneck.values())
    expected = input_spikes * RANK + sum(s.spikes for s in bottleneck.values()) * h  # both adapted layers emit h
    sops = sum(s.sops for s in adapted.stats.values()) - sum(s.sops for s in plain.stats.values())
    assert sops == pytest.approx(expected)
    assert sum(s.spikes for s in bottleneck.values()) > 0  # the threshold is low enough to fire


def test_the_report_of_an_adapted_model_includes_the_adapters():
    ids = tiny_batch()["input_ids"]
    model = _adapted(["q_proj", "v_proj"])
    report = energy_report(model, ids)
    assert {"lora_shrink", "lora_expand"} <= set(report["spike_driven_ops"])
    assert report["float_ops"]["lora_add"]["acs"] > 0
    assert any(".lora_neuron." in name for name in report["encoders"])
