"""save_pretrained -> hybridtune.adapters.load restores exactly; the plain-peft misload is refused loudly."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from hybridtune.adapters import (
    MARKER_FILE,
    PEFT_TYPE_MARKER,
    SpikingAdapterLoadError,
    SpikingLoraConfig,
    get_spiking_peft_model,
    load,
    read_marker,
    spiking_lora_config,
)
from hybridtune.adapters.config import SPIKING_LORA
from hybridtune.adapters.model import SpikingLoraModel
from hybridtune.testing import tiny_batch, tiny_model


@pytest.mark.parametrize("family,neuron", [("llama", "lif"), ("gpt2", "mt"), ("gemma3", "heaviside")])
def test_save_load_exact(tmp_path, family, neuron, make_spiking):
    model = make_spiking(family, neuron)
    batch = tiny_batch()
    with torch.no_grad():
        want = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", MARKER_FILE} <= {p.name for p in tmp_path.iterdir()}
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert any("lora_neuron" in k for k in keys) and not any(k.endswith(".state") for k in keys)
    marker = read_marker(tmp_path)
    assert marker["adapters"]["default"]["neuron"]["kind"] == neuron and marker["spiking_base"] is False
    loaded = load(tiny_model(family), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())  # is_trainable=False by default
    trainable = load(tiny_model(family), tmp_path, is_trainable=True)
    assert any(p.requires_grad and "lora_neuron" in n for n, p in trainable.named_parameters())


def test_peft_from_pretrained_builds_spiking_lora(tmp_path, make_spiking):
    # spiking LoRA is a registered peft method: peft's own loader rebuilds the neurons exactly
    model = make_spiking("llama", "lif")
    batch = tiny_batch()
    with torch.no_grad():
        want = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == SPIKING_LORA
    again = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert isinstance(again.peft_config["default"], SpikingLoraConfig)
    assert isinstance(again.base_model, SpikingLoraModel)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, want, rtol=0, atol=0)


def test_peft_without_hybridtune_fails_loudly(tmp_path, make_spiking):
    make_spiking("llama", "mt").save_pretrained(tmp_path)
    code = f"from peft import PeftConfig; PeftConfig.from_pretrained({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"KeyError: '{SPIKING_LORA}'" in done.stderr


def test_adapter_saved_with_the_legacy_marker_still_loads(tmp_path, make_spiking):
    # adapters saved before the peft registration carry PEFT_TYPE_MARKER as their peft_type
    model = make_spiking("llama", "lif")
    batch = tiny_batch()
    with torch.no_grad():
        want = model(**batch).logits
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    data = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**data, "peft_type": PEFT_TYPE_MARKER}))
    loaded = load(tiny_model("llama"), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, want, rtol=0, atol=0)


def test_get_spiking_peft_model_leaves_the_config_alone():
    cfg = spiking_lora_config(r=2, neuron="lif", target_modules=["q_proj"])
    before = copy.deepcopy(cfg.__dict__)
    pm = get_spiking_peft_model(tiny_model("llama"), cfg)
    pm.add_adapter("second", cfg)
    assert cfg.__dict__ == before and cfg.task_type is None
    assert pm.peft_config["default"] is not cfg and pm.peft_config["default"].task_type == "CAUSAL_LM"
    assert type(pm).__name__ == "SpikingPeftModelForCausalLM" and type(pm).__mro__[1].__name__ == "SpikingPeftMixin"


def test_plain_lora_layers_cannot_swallow_spiking_weights(tmp_path, make_spiking):
    # if the marker is edited away, peft would build plain LoRA layers: the neuron keys are then unexpected
    make_spiking("llama", "lif").save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    data = json.loads(config_file.read_text())
    data["peft_type"] = "LORA"
    config_file.write_text(json.dumps(data))
    plain = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=data["target_modules"]))
    result = plain.load_adapter(str(tmp_path), "other")
    assert any("lora_neuron" in k for k in result.unexpected_keys)  # what hybridtune's loader checks
    from hybridtune.adapters.model import check_load_result

    with pytest.raises(SpikingAdapterLoadError, match="hybridtune.adapters.load"):
        check_load_result(result, "other", tmp_path)


def test_load_refuses_missing_neuron_weights(tmp_path, make_spiking):
    make_spiking("llama", "lif").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "lora_neuron" not in k}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(SpikingAdapterLoadError, match="missing keys"):
        load(tiny_model("llama"), tmp_path)


def test_load_refuses_plain_lora_dir_and_other_bases(tmp_path, make_spiking):
    plain = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(SpikingAdapterLoadError, match="not a hybridtune spiking adapter"):
        load(tiny_model("llama"), tmp_path / "plain")
    make_spiking("llama", "mt").save_pretrained(tmp_path / "spk")
    with pytest.raises(SpikingAdapterLoadError, match="fingerprint"):
        load(tiny_model("llama", seed=1), tmp_path / "spk")
    load(tiny_model("llama", seed=1), tmp_path / "spk", check_fingerprint=False)


def test_several_adapters_round_trip(tmp_path, make_spiking):
    model = make_spiking("llama", "lif")
    model.add_adapter("task2", spiking_lora_config(r=2, neuron="mt", target_modules=["q_proj"], init_b_std=0.05))
    batch = tiny_batch()
    with torch.no_grad():
        want_default = model(**batch).logits
        model.set_adapter("task2")
        want_task2 = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "task2" / MARKER_FILE).is_file()
    assert sorted(read_marker(tmp_path)["adapters"]) == ["default", "task2"]
    loaded = load(tiny_model("llama"), tmp_path)
    assert sorted(loaded.peft_config) == ["default", "task2"] and loaded.active_adapter == "default"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, want_default, rtol=0, atol=0)
        loaded.set_adapter("task2")
        torch.testing.assert_close(loaded(**batch).logits, want_task2, rtol=0, atol=0)
    only = load(tiny_model("llama"), tmp_path / "task2", adapter_name="task2")
    with torch.no_grad():
        torch.testing.assert_close(only(**batch).logits, want_task2, rtol=0, atol=0)
    # loading into an existing spiking model adds the adapter
    base_plus = load(load(tiny_model("llama"), tmp_path, adapter_name="default"), tmp_path, adapter_name="task2")
    assert sorted(base_plus.peft_config) == ["default", "task2"]


def test_add_adapter_needs_spiking_config(make_spiking):
    model = make_spiking("llama", "mt")
    with pytest.raises(TypeError, match="SpikingLoraConfig"):
        model.add_adapter("plain", LoraConfig(r=2, target_modules=["q_proj"]))


def test_config_round_trip(tmp_path, make_spiking):
    model = make_spiking("llama", "lif", init_b_std=0.01)
    model.save_pretrained(tmp_path)
    cfg = SpikingLoraConfig.from_adapter_dir(tmp_path)
    original = model.peft_config["default"]
    assert cfg.neuron == original.neuron and cfg.init_b_std == 0.01 and cfg.r == original.r
    assert cfg._custom_modules  # the custom-module registration is rebuilt
