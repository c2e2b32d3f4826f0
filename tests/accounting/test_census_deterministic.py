"""Identical inputs give identical SOP and energy figures: the census never forgets the spikes of an encoder output
that an adapter has yet to read (it used to clear its whole table past 64 entries, so the result depended on how
tensor ids happened to be reused)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from torch import nn

from hybridtune.accounting import energy_report
from hybridtune.accounting.census import Census, _Hooks
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.conversion import ConversionConfig, convert
from hybridtune.testing import tiny_batch, tiny_model


class _Encoder(nn.Module):
    """The two attributes the census looks for on an input encoder: ``fan_out`` and per-call ``stats``."""

    def __init__(self):
        super().__init__()
        self.fan_out = 1
        self.stats = SimpleNamespace(spikes=0.0)

    def forward(self, x):
        self.stats.spikes += float(x.sum())
        return x * 1.0


def test_live_encoder_outputs_keep_their_spike_counts_past_any_table_size():
    enc = _Encoder()
    hooks = _Hooks(enc, Census())
    handles = hooks.encoder_hooks(enc)
    outs = [enc(torch.full((3,), float(i))) for i in range(200)]  # all alive, as activations awaiting a reader
    for i, out in enumerate(outs):
        ref, spikes = hooks.encoder_calls[id(out)]
        assert ref() is out and spikes == 3.0 * i, i
    del outs, out
    for _ in range(1000):  # dead outputs are forgotten: the table stays bounded by the live ones
        enc(torch.ones(3))
    assert len(hooks.encoder_calls) <= 2 * 200 + 1
    for h in handles:
        h.remove()


def test_identical_calls_give_identical_sop_and_energy_figures():
    torch.manual_seed(0)
    snn = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    model = get_spiking_peft_model(snn, spiking_lora_config(r=4, threshold=0.02, init_b_std=0.05,
                                                            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    ids = torch.cat([tiny_batch()["input_ids"]] * 4)
    first = energy_report(model, ids, batch_size=2)
    for _ in range(3):
        again = energy_report(model, ids, batch_size=2)
        assert json.dumps(again["total"], sort_keys=True, default=str) == json.dumps(first["total"], sort_keys=True,
                                                                                      default=str)
