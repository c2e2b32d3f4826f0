"""The one NLL: the sliced loss (large vocabularies) equals the whole-tensor one, in values and gradients, for every
tiny family, and never runs ``lm_head`` on more than one slice of positions at once."""

from __future__ import annotations

import pytest
import torch

from hybridtune.perplexity import causal_lm_nll, model_nll, perplexity
from hybridtune.testing import FAMILIES, tiny_model

WHOLE = 1 << 62


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (2, 16), generator=g)
    labels = ids.clone()
    labels[1, :3] = -100  # padding on one row
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _slice_budget(batch, positions: int, vocab: int = 256) -> int:
    return batch["input_ids"].shape[0] * vocab * 4 * positions


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_loss_equals_the_whole_one(family):
    model, batch = tiny_model(family), _batch()
    with torch.no_grad():
        whole, n = model_nll(model, batch, max_logits_bytes=WHOLE)
        sliced, m = model_nll(model, batch, max_logits_bytes=_slice_budget(batch, 5))
        reference, k = causal_lm_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     batch["labels"])
    assert int(n) == int(m) == int(k) == 15 + 13
    torch.testing.assert_close(whole, reference)
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)


def test_gemma_soft_capping_is_applied_in_the_slices():
    model, batch = tiny_model("gemma3"), _batch()
    model.config.final_logit_softcapping = 2.0  # Gemma 2 style: the forward caps after lm_head
    with torch.no_grad():
        whole, _ = model_nll(model, batch, max_logits_bytes=WHOLE)
        sliced, _ = model_nll(model, batch, max_logits_bytes=_slice_budget(batch, 4))
        uncapped = causal_lm_nll(model.lm_head(model.model(input_ids=batch["input_ids"],
                                                            attention_mask=batch["attention_mask"]).last_hidden_state),
                                 batch["labels"])[0]
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole, uncapped, atol=1e-3)  # the cap matters here, so the check can fail


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_sliced_gradients_equal_the_whole_ones(family):
    batch = _batch(1)
    grads = []
    for budget in (WHOLE, _slice_budget(batch, 3)):
        model = tiny_model(family)
        model.requires_grad_(False)
        trained = [model.model.layers[-1].mlp.down_proj.weight, model.model.norm.weight]
        for p in trained:
            p.requires_grad_(True)
        nll, n = model_nll(model, batch, max_logits_bytes=budget)
        (nll.sum() / n).backward()
        grads.append([p.grad.clone() for p in trained])
    for whole, sliced in zip(*grads):
        torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-4)


def test_lm_head_never_sees_more_than_one_slice():
    model, batch = tiny_model("llama"), _batch()
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model_nll(model, batch, max_logits_bytes=_slice_budget(batch, 6))
    finally:
        handle.remove()
    assert seen == [(2, 0, 64), (2, 6, 64), (2, 6, 64), (2, 4, 64)]  # the model's own call gets an empty slice


def test_perplexity_is_unchanged_by_slicing(monkeypatch):
    import hybridtune.perplexity as ppl

    model, batch = tiny_model("qwen3"), _batch()
    whole = perplexity(model, batch, batch_size=1)
    monkeypatch.setattr(ppl, "LOGITS_CHUNK_BYTES", 256 * 4 * 3)  # three positions per slice
    sliced = perplexity(model, batch, batch_size=1)
    assert whole["tokens"] == sliced["tokens"] == 28
    assert sliced["nll"] == pytest.approx(whole["nll"], rel=1e-6)
