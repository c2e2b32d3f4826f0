"""Spiking base + adapter assembled for evaluation (``hybridtune eval --spiking DIR --adapter DIR``)."""

from __future__ import annotations

import pytest
import torch

import hybridtune.conversion as hc
from hybridtune.adapters import (
    SpikingAdapterLoadError,
    get_spiking_peft_model,
    load,
    load_for_eval,
    spiking_lora_config,
)
from hybridtune.testing import tiny_batch, tiny_model


def _trained_spiking(tmp_path, family="llama"):
    snn = hc.convert(tiny_model(family), hc.ConversionConfig(compensation=False))
    hc.save_spiking(snn, tmp_path / "snn")
    torch.manual_seed(0)
    model = get_spiking_peft_model(snn, spiking_lora_config(r=4, neuron="lif", target_modules=["q_proj", "down_proj"],
                                                            init_b_std=0.05, threshold=0.05)).eval()
    model.save_pretrained(tmp_path / "adapter")
    return model


def test_load_for_eval_restores_spiking_base_and_adapter(tmp_path):
    model = _trained_spiking(tmp_path)
    batch = tiny_batch()
    with torch.no_grad():
        want = model(**batch).logits
        got = load_for_eval(tmp_path / "adapter", spiking_dir=tmp_path / "snn", model=tiny_model("llama"))(**batch)
    torch.testing.assert_close(got.logits, want, rtol=0, atol=0)


def test_adapter_of_spiking_base_refuses_ann(tmp_path):
    _trained_spiking(tmp_path)
    with pytest.raises(SpikingAdapterLoadError, match="load_spiking"):
        load(tiny_model("llama"), tmp_path / "adapter")


@pytest.mark.real_model
def test_default_model_spiking_adapter_round_trip(tmp_path, default_model):
    import copy

    # float64: in float32, KV-cached and full attention differ by rounding (~3e-5), which can flip single graded /
    # LIF spikes of the spiking base; a flipped LIF spike then persists in the carried state
    snn = hc.convert(copy.deepcopy(default_model).double(), hc.ConversionConfig(compensation=False))
    hc.save_spiking(snn, tmp_path / "snn")
    model = get_spiking_peft_model(snn, spiking_lora_config(r=8, neuron="lif", init_b_std=0.01)).eval()
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(100, 5000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        again = load_for_eval(tmp_path / "adapter", spiking_dir=tmp_path / "snn",
                              model=copy.deepcopy(default_model).double())
        torch.testing.assert_close(again(input_ids=ids).logits, want, rtol=0, atol=0)
        gen = again.generate(input_ids=ids[:, :16], max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        full = again(input_ids=gen.sequences).logits
    torch.testing.assert_close(torch.stack(gen.logits, 1).double(), full[:, 15:-1], rtol=1e-4, atol=1e-4)
