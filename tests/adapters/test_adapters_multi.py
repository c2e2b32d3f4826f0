"""Several named adapters on one base: activation, trainability of neurons, stacking, deletion; the config."""

from __future__ import annotations

import pytest
import torch

from hybridtune.adapters import (
    BottleneckNeuron,
    LIFStrategy,
    SpikingLoraConfig,
    neuron_strategy,
    spiking_lora_config,
)
from hybridtune.testing import tiny_batch


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_inactive_adapters_neurons_are_frozen(make_spiking):
    model = make_spiking("llama", "lif")
    model.add_adapter("task2", spiking_lora_config(r=2, neuron="lif", target_modules=["q_proj", "v_proj"]))
    model.set_adapter("task2")
    names = _trainable(model)
    assert names and all(".task2." in n for n in names)
    assert any("lora_neuron.task2.decay_logit" in n for n in names)
    frozen = [p for n, p in model.named_parameters() if "lora_neuron.default" in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_two_active_adapters_add_up(make_spiking):
    model = make_spiking("llama", "mt", target_modules=["q_proj"])
    model.add_adapter("b", spiking_lora_config(r=3, neuron="mt", target_modules=["q_proj"], init_b_std=0.05))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        parts = []
        for name in ("default", "b"):
            model.base_model.set_adapter(name)
            parts.append(layer(x) - layer.get_base_layer()(x))
        model.base_model.set_adapter(["default", "b"])
        both = layer(x)
    torch.testing.assert_close(both, layer.get_base_layer()(x) + parts[0] + parts[1], rtol=1e-5, atol=1e-6)


def test_active_adapters_with_different_neurons_are_refused(make_spiking):
    model = make_spiking("llama", "mt", target_modules=["q_proj"])
    model.add_adapter("lif", spiking_lora_config(r=2, neuron="lif", target_modules=["q_proj"]))
    model.base_model.set_adapter(["default", "lif"])
    with pytest.raises(ValueError, match="different neurons"):
        model(**tiny_batch())


def test_delete_adapter_drops_its_neuron(make_spiking):
    model = make_spiking("llama", "lif")
    model.add_adapter("gone", spiking_lora_config(r=2, neuron="lif", target_modules=["q_proj"]))
    model.delete_adapter("gone")
    assert not any(".gone" in n for n, _ in model.named_modules())


def test_neuron_module_parameters_and_state():
    neuron = BottleneckNeuron(3, LIFStrategy(threshold=0.5, decay=1.0, learn_threshold=False))
    assert neuron.threshold().tolist() == [0.5] * 3
    assert 0.999 < float(neuron.decay()[0]) < 1.0  # a learnable decay of 1 starts just below it
    assert "fixed_threshold" in neuron.state_dict() and "state" not in neuron.state_dict()
    neuron.state = torch.ones(2, 3)
    neuron.reset_state()
    assert neuron.state is None
    with pytest.raises(ValueError, match="> 0"):
        neuron.set_threshold(-1.0)


def test_strategies_and_config_errors():
    assert neuron_strategy({"kind": "lif", "decay": 0.5}).decay == 0.5
    assert neuron_strategy("mt", max_spikes=None).max_spikes == 0
    with pytest.raises(ValueError, match="choose one of lif, mt, heaviside"):
        neuron_strategy("relu")
    with pytest.raises(ValueError, match="decay=1.5"):
        neuron_strategy("lif", decay=1.5)
    with pytest.raises(ValueError, match="unknown surrogate 'erf'"):
        neuron_strategy("heaviside", surrogate="erf")
    with pytest.raises(ValueError, match="has no field"):
        neuron_strategy("heaviside", decay=0.5)
    with pytest.raises(ValueError, match="use_dora"):
        SpikingLoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    cfg = SpikingLoraConfig(r=2, target_modules=["q_proj"], neuron={"kind": "heaviside", "threshold": 0.2})
    assert cfg.neuron.kind == "heaviside" and cfg.to_dict()["neuron"]["threshold"] == 0.2


def test_flat_config_mirrors_run_config_section():
    from hybridtune.config import AdapterSection

    section = AdapterSection()
    cfg = spiking_lora_config(r=section.r, alpha=section.alpha, dropout=section.dropout,
                              target_modules=section.target_modules, neuron=section.neuron,
                              threshold=section.threshold, decay=section.decay, max_spikes=section.max_spikes,
                              surrogate=section.surrogate, slope=section.slope, init_b_std=section.init_b_std)
    assert (cfg.r, cfg.lora_alpha, cfg.neuron.kind, cfg.neuron.threshold) == (section.r, section.alpha,
                                                                              section.neuron, section.threshold)
