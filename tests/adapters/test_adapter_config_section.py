"""One adapter config: the run config's ``adapter`` section (``AdapterSection``) is what ``spiking_lora_config`` and
the trainer build the peft config from; every field reaches it and an unknown key is an error, not dropped."""

from __future__ import annotations

import dataclasses

import pytest

from hybridtune.adapters import lora_config, spiking_lora_config
from hybridtune.config import AdapterSection, ConfigError, load_config
from hybridtune.testing import tiny_model
from hybridtune.trainers.domain import attach_adapter


def test_every_field_of_the_section_reaches_the_peft_config():
    section = AdapterSection(r=3, alpha=6.0, dropout=0.1, target_modules=["q_proj"], neuron="lif", threshold=0.2,
                             decay=0.7, surrogate="sigmoid", slope=5.0, init_b_std=0.01, learn_threshold=False,
                             learn_decay=False)
    cfg = lora_config(section)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, set(cfg.target_modules), cfg.init_b_std) == \
        (3, 6.0, 0.1, {"q_proj"}, 0.01)
    n = cfg.neuron
    assert (n.kind, n.threshold, n.decay, n.surrogate, n.slope, n.learn_threshold, n.learn_decay) == \
        ("lif", 0.2, 0.7, "sigmoid", 5.0, False, False)
    assert lora_config(AdapterSection(neuron="mt", max_spikes=3)).neuron.max_spikes == 3


def test_the_flat_constructor_is_the_section():
    fields = {f.name for f in dataclasses.fields(AdapterSection)}
    flat = spiking_lora_config(r=3, neuron="lif", learn_decay=False, target_modules=["q_proj"])
    assert flat.to_dict() == lora_config(AdapterSection(r=3, neuron="lif", learn_decay=False,
                                                        target_modules=["q_proj"])).to_dict()
    assert {"learn_threshold", "learn_decay"} <= fields  # the fields the run config used to drop
    assert spiking_lora_config(bias="lora_only", target_modules=["q_proj"]).bias == "lora_only"  # peft options pass


def test_unknown_keys_are_errors_not_dropped():
    with pytest.raises(ConfigError, match="unknown key 'decy'; did you mean 'decay'"):
        spiking_lora_config(r=4, decy=0.5)
    with pytest.raises(ConfigError, match="adapter.learn_threshhold: unknown key; did you mean 'learn_threshold'"):
        load_config(None, ["adapter.learn_threshhold=false"])


def test_the_trainer_attaches_what_the_run_config_says():
    cfg = load_config(None, ["adapter.r=2", "adapter.target_modules=[q_proj]", "adapter.neuron=lif",
                             "adapter.learn_threshold=false"])
    model = attach_adapter(tiny_model("llama"), cfg.adapter)
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.r == 2 and peft_cfg.neuron.learn_threshold is False
    expected = {k: v for k, v in lora_config(cfg.adapter).to_dict().items() if k != "task_type"}  # set by peft
    assert {k: v for k, v in peft_cfg.to_dict().items() if k != "task_type"} == expected
