import json

import pytest

from hybridtune.cli import main
from hybridtune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_model("qwen3").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"note {i}: spiking networks count events, not products." for i in range(60)))
    return path


def test_convert_then_eval_spiking_then_report(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "snn"
    assert main(["convert", "--model", str(tiny_dir), "--out", str(out), "conversion.coverage=[ffn_act,linear_inputs]",
                 "conversion.calib_data=" + str(text_file)]) == 0
    assert (out / "spiking.json").is_file()
    res = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_dir), "--spiking", str(out), "--data", str(text_file),
                 "--block-size", "64", "--json", str(res)]) == 0
    result = json.loads(res.read_text())
    assert result["ppl"] > 1 and result["accounting"]
    assert main(["report", str(out), "--model", str(tiny_dir), "--data", str(text_file), "--max-tokens", "256",
                 "--block-size", "64", "--json"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["ppl_ratio"] > 0


def test_convert_refuses_to_clobber_a_foreign_directory(tiny_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["convert", "--model", str(tiny_dir), "--out", str(out)]) == 2
    assert "refusing" in capsys.readouterr().err and (out / "precious.txt").read_text() == "keep me"


def test_convert_bad_override_exits_2_before_loading(tmp_path, capsys):
    assert main(["convert", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "conversion.coverage=[ffn]"]) == 2
    assert "did you mean 'ffn_act'" in capsys.readouterr().err


def test_report_on_missing_state_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "spiking" in capsys.readouterr().err


def test_eval_with_spiking_base_and_adapter(tiny_dir, text_file, tmp_path):
    import torch

    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    from hybridtune.conversion import load_spiking
    from hybridtune.models import load_model

    snn_dir = tmp_path / "snn"
    assert main(["convert", "--model", str(tiny_dir), "--out", str(snn_dir), "conversion.calib_data=" + str(text_file)]) == 0
    peft_model = get_spiking_peft_model(load_spiking(load_model(str(tiny_dir)), snn_dir),
                                        spiking_lora_config(r=4, neuron="lif", target_modules=["q_proj", "v_proj"],
                                                            init_b_std=0.05))
    with torch.no_grad():  # make the adapter matter so the two evaluations must differ
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.normal_(0, 0.5)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    plain, adapted = tmp_path / "plain.json", tmp_path / "adapted.json"
    common = ["eval", "--model", str(tiny_dir), "--spiking", str(snn_dir), "--data", str(text_file),
              "--block-size", "64"]
    assert main([*common, "--json", str(plain)]) == 0
    assert main([*common, "--adapter", str(adapter_dir), "--json", str(adapted)]) == 0
    a, b = json.loads(plain.read_text()), json.loads(adapted.read_text())
    assert b["adapter"] == str(adapter_dir) and a["ppl"] != b["ppl"]
