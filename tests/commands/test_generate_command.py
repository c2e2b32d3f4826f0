import json

import pytest

import hybridtune.conversion as hc
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.cli import main
from hybridtune.models import load_model
from hybridtune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    base = root / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    snn = hc.convert(load_model(str(base)), hc.ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    hc.save_spiking(snn, root / "snn")
    cfg = spiking_lora_config(r=4, neuron="lif", threshold=0.01, init_b_std=0.5, target_modules=["q_proj"])
    get_spiking_peft_model(snn, cfg).save_pretrained(root / "adapter")
    return {"base": str(base), "snn": str(root / "snn"), "adapter": str(root / "adapter")}


def test_generate_streams_text_and_prints_the_spike_line(dirs, tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["generate", "--model", dirs["base"], "--spiking", dirs["snn"], "--adapter", dirs["adapter"],
                 "--max-new-tokens", "5", "--json", str(out), "hello"]) == 0
    captured = capsys.readouterr()
    assert "spikes/neuron" in captured.err and "less than the ANN" in captured.err
    result = json.loads(out.read_text())
    assert len(result["token_ids"]) == 5 and result["text"] in captured.out
    assert result["accounting"]["total"]["spikes"] > 0


def test_generate_json_to_stdout(dirs, capsys):
    assert main(["generate", "--model", dirs["base"], "--spiking", dirs["snn"], "--max-new-tokens", "3",
                 "--json", "--", "hi"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["token_ids"]) == 3


@pytest.mark.parametrize("argv, culprit", [
    (["--spiking", "/nonexistent/snn", "hi"], "/nonexistent/snn"),
    (["--adapter", "ADAPTER", "hi"], "--adapter needs --spiking"),
    (["--spiking", "SNN", "--adapter", "ADAPTER", "--num-beams", "3", "hi"], "num_beams=3"),
    (["--spiking", "SNN", "--max-new-tokens", "0", "hi"], "max_new_tokens"),
    (["--spiking", "SNN", "--file", "/nonexistent/prompt.txt"], "/nonexistent/prompt.txt"),
    (["--spiking", "SNN"], "no prompt"),
    (["--spiking", "SNN", "--chat", "hi"], "chat template"),
])
def test_bad_input_exits_2_naming_the_culprit(dirs, capsys, argv, culprit):
    argv = [a.replace("SNN", dirs["snn"]).replace("ADAPTER", dirs["adapter"]) for a in argv]
    assert main(["generate", "--model", dirs["base"], *argv]) == 2
    assert culprit in capsys.readouterr().err


def test_run_dir_that_is_not_a_run_exits_2_naming_it(dirs, tmp_path, capsys):
    assert main(["generate", "--run", str(tmp_path), "hi"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert main(["generate", "--run", str(tmp_path), "--spiking", dirs["snn"], "hi"]) == 2
    assert "--run" in capsys.readouterr().err


def test_generate_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "--max-new-tokens" in text and "--chat" in text and "--num-beams" in text
