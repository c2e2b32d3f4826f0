import json

import pytest

from hybridtune.cli import main
from hybridtune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_eval_user_txt_writes_json(tiny_dir, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))
    out = tmp_path / "res" / "eval.json"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(text), "--block-size", "64",
                 "--json", str(out)]) == 0
    assert "perplexity" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["ppl"] > 1 and result["tokens"] > 0
    assert len(result["content_hash"]) == 64 and result["versions"]["torch"]
    assert result["data"] and result["model"] == str(tiny_dir)


def test_eval_missing_file_exits_2_naming_path(tiny_dir, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_eval_missing_model_exits_2(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "absent.gguf"), "--data", "python-docs"]) == 2
    assert "absent.gguf" in capsys.readouterr().err


@pytest.mark.real_model
def test_eval_default_model_on_python_docs(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["eval", "--model", "default", "--data", "python-docs", "--max-tokens", "256",
                 "--block-size", "128", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 3 < result["ppl"] < 60 and result["tokens"] == 254
