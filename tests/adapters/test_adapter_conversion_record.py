"""An adapter records the conversion it was trained on (config + calibration state, beside the base fingerprint);
loading it onto another conversion of the same base is refused naming both, unless explicitly allowed; a damaged
adapter directory fails naming the file."""

from __future__ import annotations

import json

import pytest
import torch

from hybridtune.adapters import SpikingAdapterLoadError, get_spiking_peft_model, load, read_marker, spiking_lora_config
from hybridtune.adapters.model import conversion_fingerprint
from hybridtune.conversion import ConversionConfig, convert, load_spiking, save_spiking
from hybridtune.files import FileError
from hybridtune.testing import tiny_batch, tiny_model


def _converted(divisor: float = 8.0):
    return convert(tiny_model("llama"), ConversionConfig(divisor=divisor, compensation=False))


def _adapter_on(snn, path):
    torch.manual_seed(0)
    pm = get_spiking_peft_model(snn, spiking_lora_config(r=4, target_modules=["q_proj", "v_proj"], threshold=0.05,
                                                         init_b_std=0.01))
    pm.save_pretrained(path)
    return pm


def test_the_adapter_records_the_conversion_beside_the_base(tmp_path):
    snn = _converted()
    _adapter_on(snn, tmp_path / "a")
    marker = read_marker(tmp_path / "a")
    assert marker["conversion_fingerprint"] == conversion_fingerprint(snn) and len(marker["conversion_fingerprint"]) == 16
    assert marker["base_fingerprint"] and marker["conversion_fingerprint"] != marker["base_fingerprint"]
    assert conversion_fingerprint(tiny_model("llama")) is None
    assert conversion_fingerprint(_converted(4.0)) != conversion_fingerprint(snn)


def test_the_same_conversion_saved_and_loaded_again_matches(tmp_path):
    snn = _converted()
    pm = _adapter_on(snn, tmp_path / "a")
    save_spiking(snn, tmp_path / "snn")
    again = load(load_spiking(tiny_model("llama"), tmp_path / "snn"), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(again(**tiny_batch()).logits, pm.eval()(**tiny_batch()).logits, rtol=0, atol=0)


def test_loading_onto_another_conversion_is_refused_naming_both_unless_allowed(tmp_path):
    snn = _converted(8.0)
    _adapter_on(snn, tmp_path / "a")
    other = _converted(4.0)
    with pytest.raises(SpikingAdapterLoadError) as err:
        load(other, tmp_path / "a")
    message = str(err.value)
    assert conversion_fingerprint(snn) in message and conversion_fingerprint(other) in message
    assert "allow_other_conversion=True" in message and "--allow-other-conversion" in message
    loaded = load(_converted(4.0), tmp_path / "a", allow_other_conversion=True)
    assert "default" in loaded.peft_config


def test_the_eval_command_refuses_another_conversion_with_exit_2(tmp_path, capsys):
    from hybridtune.cli import main
    from hybridtune.testing import tiny_tokenizer

    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    _adapter_on(_converted(8.0), tmp_path / "a")
    save_spiking(_converted(4.0), tmp_path / "other")
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(60)))
    common = ["eval", "--model", str(base), "--data", str(corpus), "--split", "all", "--block-size", "16",
              "--max-tokens", "64", "--spiking", str(tmp_path / "other"), "--adapter", str(tmp_path / "a")]
    assert main(common) == 2
    assert "--allow-other-conversion" in capsys.readouterr().err
    assert main([*common, "--allow-other-conversion"]) == 0


@pytest.mark.parametrize("target", ["hybridtune_config.json", "adapter_config.json", "adapter_model.safetensors"])
def test_a_damaged_adapter_file_is_named(tmp_path, target):
    _adapter_on(_converted(), tmp_path / "a")
    path = tmp_path / "a" / target
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises((FileError, SpikingAdapterLoadError)) as err:
        load(_converted(), tmp_path / "a")
    assert str(path) in str(err.value)
    if target.endswith(".json"):
        json.dumps(str(err.value))  # a plain message, no traceback object
