import pytest
import torch

from hybridtune.testing import FAMILIES, tiny_batch, tiny_config, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_with_labels_and_generate(family):
    model = tiny_model(family)
    batch = tiny_batch()
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, 16, 256)
    assert torch.isfinite(out.loss)
    gen = model.generate(batch["input_ids"][:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 9)


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_models_are_reproducible(family):
    a, b = tiny_model(family, seed=3), tiny_model(family, seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    c = tiny_model(family, seed=4)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_llama4_has_moe_with_shared_expert():
    model = tiny_model("llama4")
    names = [type(m).__name__ for m in model.modules()]
    assert "Llama4TextMoe" in names
    assert any("shared_expert" in n for n, _ in model.named_modules())


def test_gpt2_uses_conv1d():
    from transformers.pytorch_utils import Conv1D

    assert any(isinstance(m, Conv1D) for m in tiny_model("gpt2").modules())


def test_tokenizer_round_trip_without_download():
    tok = tiny_tokenizer()
    text = "def f(x):\n\treturn x + 1  # ok"
    ids = tok(text).input_ids
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2


def test_unknown_family_names_the_choices():
    with pytest.raises(ValueError, match="llama, gemma3"):
        tiny_config("mamba")
