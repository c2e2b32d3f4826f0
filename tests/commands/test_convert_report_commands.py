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
