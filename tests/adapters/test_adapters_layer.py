"""SpikingLoraLinear: the forward is base + the op's spiking LoRA, on Linear, Conv1D and spiking bases."""

from __future__ import annotations

import pytest
import torch

import hybridtune.conversion as hc
from hybridtune.adapters import MERGE_ERROR, SpikingLoraLinear, get_spiking_peft_model, spiking_lora_config
from hybridtune.neurons import SpikingLinear
from hybridtune.ops import bottleneck_forward
from hybridtune.testing import FAMILIES, tiny_batch, tiny_model


def manual_lora(layer: SpikingLoraLinear, x: torch.Tensor, name: str = "default") -> torch.Tensor:
    """``scaling * B(neuron(A x_spk))`` recomputed from the pure numerics (no op call)."""
    base = layer.get_base_layer()
    x_spk = base.encode(x) if hasattr(base, "encode") else x
    neuron = layer.lora_neuron[name]
    h = x_spk @ layer.lora_A[name].weight.t()
    y, _, _ = bottleneck_forward(h, neuron.kind, neuron.threshold(), neuron.decay(), None, None,
                                 neuron.strategy.op_max_spikes)
    return layer.scaling[name] * y @ layer.lora_B[name].weight.t()


@pytest.mark.parametrize("neuron", ["mt", "lif", "heaviside"])
def test_forward_is_base_plus_spiking_lora(neuron, make_spiking):
    model = make_spiking("llama", neuron)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 7, layer.in_features)
    with torch.no_grad():
        got = layer(x)
        want = layer.get_base_layer()(x) + manual_lora(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert manual_lora(layer, x).abs().sum() > 0  # the adapter contributes


def test_gpt2_conv1d(make_spiking):
    model = make_spiking("gpt2", "mt")
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer, SpikingLoraLinear) and type(layer.get_base_layer()).__name__ == "Conv1D"
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + manual_lora(layer, x), rtol=1e-5, atol=1e-6)
    model.train()
    batch = tiny_batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family,neuron", [(f, "lif") for f in FAMILIES] + [("llama4", "mt"), ("gpt2", "heaviside")])
def test_families_train_step(family, neuron, make_spiking):
    model = make_spiking(family, neuron).train()
    batch = tiny_batch()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)
    assert any("lora_neuron" in n for n, _ in trainable)
    assert not any("base_layer" in n for n, _ in trainable)


def test_adapter_reads_the_spiking_input():
    snn = hc.convert(tiny_model("llama"), hc.ConversionConfig(compensation=False))
    model = get_spiking_peft_model(snn, spiking_lora_config(r=4, neuron="mt", target_modules=["down_proj"],
                                                            init_b_std=0.05))
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    base = layer.get_base_layer()
    assert isinstance(base, SpikingLinear) and base.encoder is not None
    x = torch.randn(2, 6, layer.in_features)
    with torch.no_grad():
        got = layer(x)
        want = base(x) + manual_lora(layer, x)  # manual_lora encodes with base.encode first
        plain = base(x) + layer.scaling["default"] * bottleneck_forward(
            x @ layer.lora_A["default"].weight.t(), "mt", layer.lora_neuron["default"].threshold(), torch.zeros(4),
            None, None, 8)[0] @ layer.lora_B["default"].weight.t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, plain)  # reading the raw (unencoded) input would differ


def test_dropout_keeps_base_exact(make_spiking):
    model = make_spiking("llama", "mt", dropout=0.5)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.train()
    x = torch.randn(2, 5, layer.in_features)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    dropped = layer.lora_dropout["default"](x)
    neuron = layer.lora_neuron["default"]
    y, _, _ = bottleneck_forward(dropped @ layer.lora_A["default"].weight.t(), "mt", neuron.threshold(),
                                 neuron.decay(), None, None, 8)
    want = layer.get_base_layer()(x) + layer.scaling["default"] * y @ layer.lora_B["default"].weight.t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class ShiftInput:
    """An input perturbation: the adapter sees ``x + delta``; the base is given back its clean input."""

    def __init__(self, delta: torch.Tensor):
        self.delta, self.seen = delta, []

    def perturb(self, x, info):
        self.seen.append(info)
        return x + self.delta

    def base_correction(self, weight):
        return -self.delta @ weight.t()


def test_input_perturbation_reaches_only_the_adapter_and_switches_off(make_spiking):
    model = make_spiking("llama", "mt")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    modules_before = [n for n, _ in model.named_modules()]
    x = torch.randn(2, 5, layer.in_features)
    delta = 0.3 * torch.randn(layer.in_features)
    layer.set_input_perturbation("default", ShiftInput(delta))
    assert [n for n, _ in model.named_modules()] == modules_before  # a feature switched on, no module swapped in
    neuron = layer.lora_neuron["default"]
    y, _, _ = bottleneck_forward((x + delta) @ layer.lora_A["default"].weight.t(), "mt", neuron.threshold(),
                                 neuron.decay(), None, None, 8)
    want = layer.get_base_layer()(x) + layer.scaling["default"] * y @ layer.lora_B["default"].weight.t()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    layer.set_input_perturbation("default", None)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + manual_lora(layer, x), rtol=1e-5, atol=1e-5)


def test_input_perturbation_refuses_dropout_and_non_perturbations(make_spiking):
    layer = make_spiking("llama", "mt", dropout=0.1).base_model.model.model.layers[0].self_attn.q_proj
    with pytest.raises(ValueError, match="lora_dropout=0"):
        layer.set_input_perturbation("default", ShiftInput(torch.zeros(layer.in_features)))
    with pytest.raises(KeyError, match="no adapter 'other'"):
        layer.set_input_perturbation("other", ShiftInput(torch.zeros(layer.in_features)))
    clean = make_spiking("llama", "mt").base_model.model.model.layers[0].self_attn.q_proj
    with pytest.raises(TypeError, match="InputPerturbation"):
        clean.set_input_perturbation("default", object())


def test_lora_bias_is_added(make_spiking):
    model = make_spiking("llama", "heaviside", lora_bias=True, target_modules=["q_proj"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].bias.fill_(0.25)
    x = torch.randn(1, 3, layer.in_features)
    with torch.no_grad():
        want = layer.get_base_layer()(x) + manual_lora(layer, x) + layer.scaling["default"] * 0.25
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_merge_raises_with_reason(make_spiking):
    model = make_spiking("llama", "mt")
    with pytest.raises(ValueError, match="not linear"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.base_model.merge_adapter()
    assert "B * spike(A x)" in MERGE_ERROR


def test_disable_adapter_gives_base_model(make_spiking):
    model = make_spiking("qwen3", "lif")
    base = tiny_model("qwen3")
    batch = tiny_batch()
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, base(**batch).logits)


def test_bf16_base_runs_in_base_dtype(family_targets):
    model = get_spiking_peft_model(tiny_model("llama", dtype=torch.bfloat16),
                                   spiking_lora_config(r=4, neuron="lif", target_modules=family_targets("llama")))
    model.train()
    batch = tiny_batch()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16


def test_an_online_input_transform_of_the_base_also_runs_under_the_adapter():
    """A conversion's online Hadamard (folded into the weight) is a pre-hook of the base layer's forward; the
    adapter's fused op bypasses that forward, so it must apply the transform itself or the model is silently wrong."""
    snn = hc.convert(tiny_model("llama"), hc.ConversionConfig(phases=8, outliers=("hadamard_down",), compensation=False))
    batch = tiny_batch()
    with torch.no_grad():
        expected = snn(**batch).logits
        adapted = get_spiking_peft_model(snn, spiking_lora_config(r=2, target_modules=["down_proj"]))  # B = 0
        got = adapted(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
