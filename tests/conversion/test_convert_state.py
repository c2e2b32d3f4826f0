"""Calibration determinism, save -> load round trips, refusals, config validation and the recipe registry."""

from __future__ import annotations

import json

import pytest
import torch

from hybridtune.conversion import (
    ConversionConfig,
    DecoderLayout,
    DecoderRecipe,
    available_recipes,
    calibration_ids,
    conversion_info,
    convert,
    convert_from_config,
    get_recipe,
    load_spiking,
    read_spiking,
    register_recipe,
    save_spiking,
)
from hybridtune.testing import tiny_batch, tiny_model, tiny_tokenizer

CALIB = torch.randint(3, 256, (300,), generator=torch.Generator().manual_seed(1))
STATIC = ConversionConfig(threshold="static", threshold_mode="max_abs", divisor=64.0, compensation=True,
                          calib_tokens=256, calib_block=64)


def _logits(model):
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_calibration_is_deterministic():
    a = convert(tiny_model("llama"), STATIC, calib=CALIB)
    b = convert(tiny_model("llama"), STATIC, calib=CALIB)
    sa, sb = conversion_info(a).state, conversion_info(b).state
    assert sa.keys() == sb.keys() and sa
    for site in sa:
        for kind in sa[site]:
            assert torch.equal(sa[site][kind], sb[site][kind]), (site, kind)
    assert torch.equal(_logits(a), _logits(b))
    assert conversion_info(a).calibration["tokens"] == 256


def test_calibration_uses_only_the_first_tokens():
    ids = calibration_ids(torch.arange(1000), tokens=256, block=64)
    assert ids.shape == (4, 64) and ids[0, 0] == 0 and ids[-1, -1] == 255
    changed = CALIB.clone()
    changed[256:] = 7  # beyond calib_tokens: no effect
    a = convert(tiny_model("llama"), STATIC, calib=CALIB)
    b = convert(tiny_model("llama"), STATIC, calib=changed)
    assert torch.equal(_logits(a), _logits(b))


def test_calibration_from_text_needs_and_uses_a_tokenizer():
    text = "def f(x):\n    return x + 1\n" * 40
    with pytest.raises(ValueError, match="tokenizer"):
        convert(tiny_model("llama"), STATIC, calib=text)
    snn = convert(tiny_model("llama"), STATIC, calib=text, tokenizer=tiny_tokenizer())
    assert conversion_info(snn).calibration["tokens"] == 256


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama4"])
def test_save_load_gives_identical_logits(tmp_path, family):
    cfg = STATIC.with_(coverage=("ffn_act", "linear_inputs", "attention"))
    snn = convert(tiny_model(family), cfg, calib=CALIB)
    path = save_spiking(snn, tmp_path / "snn")
    meta = json.loads((path / "spiking.json").read_text())
    assert meta["family"] == snn.config.model_type and meta["config"]["threshold"] == "static"
    assert meta["hybridtune_version"] and meta["base_fingerprint"]
    again = load_spiking(tiny_model(family), path)
    assert torch.equal(_logits(again), _logits(snn))
    assert [p for p in tmp_path.iterdir()] == [path]  # no temporaries left behind


def test_wrong_base_is_refused(tmp_path):
    path = save_spiking(convert(tiny_model("llama"), STATIC, calib=CALIB), tmp_path / "snn")
    with pytest.raises(ValueError, match="fingerprint"):
        load_spiking(tiny_model("llama", seed=1), path)
    with pytest.raises(ValueError, match="llama"):
        load_spiking(tiny_model("gpt2"), path)
    with pytest.raises(ValueError, match="fresh base"):
        load_spiking(convert(tiny_model("llama"), ConversionConfig(compensation=False)), path)


def test_save_never_clobbers_foreign_directories_and_replaces_its_own(tmp_path):
    snn = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act",), compensation=False))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_spiking(snn, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    target = tmp_path / "snn"
    save_spiking(snn, target)
    save_spiking(convert(tiny_model("llama"), STATIC, calib=CALIB), target)
    meta, state = read_spiking(target)
    assert meta["config"]["threshold"] == "static" and state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "snn"]


def test_read_spiking_on_a_wrong_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiking.json"):
        read_spiking(tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"coverage": ("ffn_act", "everything")}, "coverage"),
    ({"coverage": ("norms",)}, "linear_inputs"),
    ({"softmax": "nrelu"}, "attention"),
    ({"neuron": "graded", "timesteps": 4}, "T = 1"),
    ({"threshold_mode": "max_abs"}, "threshold_mode"),
    ({"divisor": 0}, "divisor"),
    ({"max_spikes": 0}, "max_spikes"),
    ({"coverage": ("linear_inputs", "norms"), "norms": "keep"}, "contradicts"),
    ({"neuron": "if", "timesteps": 4, "counting": "base2"}, "unary"),
])
def test_config_validation_names_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        ConversionConfig(**changes).validate()


def test_config_round_trip_and_section_mapping():
    cfg = ConversionConfig(coverage=("ffn_act",), skip=("lm_head",), compensation=False)
    assert ConversionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown conversion key"):
        ConversionConfig.from_dict({"coverag": ["ffn_act"]})
    from hybridtune.config import load_config

    section = load_config(None, ["conversion.coverage=[ffn_act, linear_inputs, norms]"]).conversion
    assert isinstance(section, ConversionConfig) and section.neuron == "graded" and section.compensation
    snn = convert_from_config(tiny_model("llama"), section, tokenizer=tiny_tokenizer())  # calibrates on calib_data
    info = conversion_info(snn)
    assert info.config == section and info.calibration["source"].startswith("corpus python-docs")
    assert info.config.compensation == section.compensation
    if section.compensation:
        assert info.calibration["source"].startswith("corpus python-docs")


def test_skip_keeps_the_named_linears_float():
    snn = convert(tiny_model("llama"), ConversionConfig(skip=("lm_head",), compensation=False))
    assert type(snn.lm_head).__name__ == "Linear"
    assert any("lm_head" in note for note in conversion_info(snn).plan.float_notes)


def test_recipes_are_registered_and_extensible():
    assert {"llama", "gemma3_text", "llama4_text", "qwen2", "qwen3", "gpt2"} <= set(available_recipes())
    with pytest.raises(ValueError, match="no conversion recipe"):
        get_recipe("not_a_family")
    register_recipe("tiny_custom_llama", DecoderRecipe(DecoderLayout()), overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("tiny_custom_llama", DecoderRecipe())
    with pytest.raises(TypeError, match="validate"):
        register_recipe("broken", object(), overwrite=True)
    snn = convert(tiny_model("llama"), ConversionConfig(compensation=False), recipe=get_recipe("tiny_custom_llama"))
    assert conversion_info(snn).plan.sites


def test_recipe_order_is_validate_calibrate_replace_finalize():
    calls = []

    class Tracing(DecoderRecipe):
        def validate(self, model, config):
            calls.append("validate")
            return super().validate(model, config)

        def calibrate(self, model, plan, config, calib_ids):
            calls.append("calibrate")
            return super().calibrate(model, plan, config, calib_ids)

        def replace(self, model, plan, state, config):
            calls.append("replace")
            return super().replace(model, plan, state, config)

        def finalize(self, model, plan, config):
            calls.append("finalize")
            return super().finalize(model, plan, config)

    convert(tiny_model("llama"), ConversionConfig(compensation=False), recipe=Tracing())
    assert calls == ["validate", "calibrate", "replace", "finalize"]


def test_bad_layout_names_the_missing_module():
    with pytest.raises(ValueError, match="transformer.h"):
        convert(tiny_model("llama"), ConversionConfig(compensation=False), recipe=DecoderRecipe(DecoderLayout(layers="transformer.h")))


def test_deep_copies_and_dtype_moves_keep_working():
    import copy

    snn = convert(tiny_model("llama"), ConversionConfig(coverage=("ffn_act", "linear_inputs", "attention"), compensation=False))
    twin = copy.deepcopy(snn)
    assert torch.equal(_logits(twin), _logits(snn))
    assert twin.model.layers[0].input_layernorm.hybridtune_encoder is not \
        snn.model.layers[0].input_layernorm.hybridtune_encoder
    assert _logits(twin.to(torch.float64)).dtype == torch.float64
