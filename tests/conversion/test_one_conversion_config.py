"""One conversion config: ``ht.convert(model)``, ``hybridtune convert`` with no options and the run config's
``conversion`` section build the same model (same defaults, same calibration)."""

from __future__ import annotations

import pytest
import torch

import hybridtune as ht
from hybridtune.cli import main
from hybridtune.config import ConfigError, RunConfig, load_config
from hybridtune.conversion import ConversionConfig, conversion_info
from hybridtune.testing import tiny_batch, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny llama and its tokenizer saved as a local model directory (what ``--model DIR`` loads)."""
    where = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(where)
    tiny_tokenizer().save_pretrained(where)
    return str(where)


def _logits(model):
    with torch.no_grad():
        return model(**tiny_batch()).logits


def test_ht_convert_and_the_convert_command_build_the_same_model(tiny_dir, tmp_path):
    assert main(["convert", "--model", tiny_dir, "--out", str(tmp_path / "snn")]) == 0
    from_cli = ht.load_spiking(ht.load_model(tiny_dir), tmp_path / "snn")
    from_api = ht.convert(ht.load_model(tiny_dir))  # calibrates on calib_data with the model's own tokenizer
    assert conversion_info(from_api).config == conversion_info(from_cli).config == RunConfig().conversion
    assert conversion_info(from_api).calibration["tokens"] > 0  # compensation calibrated: the defaults did work
    assert torch.equal(_logits(from_api), _logits(from_cli))
    # the comparison can fail: the conversion without compensation (the old ht.convert default) differs
    plain = ht.convert(ht.load_model(tiny_dir), ConversionConfig(compensation=False))
    assert not torch.equal(_logits(plain), _logits(from_cli))


def test_the_run_config_section_is_the_conversion_config():
    assert isinstance(RunConfig().conversion, ConversionConfig)
    assert load_config(None, []).conversion == ConversionConfig()
    cfg = load_config(None, ["conversion.coverage=[ffn_act]", "conversion.compensation=false"])
    assert cfg.conversion == ConversionConfig(coverage=("ffn_act",), compensation=False)


@pytest.mark.parametrize(("override", "key", "fragment"), [
    ("conversion.softmax=nrelu", "conversion.softmax", "attention"),
    ("conversion.counting=unary2", "conversion.counting", "did you mean 'unary'"),
    ("conversion.compensaton=true", "conversion.compensaton", "did you mean 'compensation'"),
    ("conversion.timesteps=4", None, None),  # None neuron: IF with unary counting above T = 1
])
def test_conversion_errors_name_the_key_once(override, key, fragment, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: default}\n")
    if key is None:
        conv = load_config(path, [override]).conversion
        assert (conv.neuron, conv.counting) == ("if", "unary")
        return
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert err.value.key == key and fragment in str(err.value) and str(path) in str(err.value)


def test_a_model_without_a_known_tokenizer_gets_an_actionable_error():
    with pytest.raises(ValueError, match="tokenizer=.*compensation=False"):
        ht.convert(tiny_model("llama"))
