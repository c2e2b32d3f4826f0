"""The top error from the forward's own logits equals the one rebuilt through norm + lm_head, in every case."""

from __future__ import annotations

import pytest
import torch

from hybridtune.conversion import ConversionConfig, convert
from hybridtune.learners.eprop.top import TopCapture, linear_head_weight, top_error
from hybridtune.perplexity import model_nll
from hybridtune.testing import tiny_batch, tiny_model


def _batch():
    b = tiny_batch(batch=3, seq=14, seed=2)
    b["attention_mask"][0, :4] = 0
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def _both(model, b, max_logits_bytes=None, chunk=7):
    with torch.no_grad(), TopCapture(model, keep_logits=True) as cap:
        model_nll(model, b, max_logits_bytes=max_logits_bytes)
        hidden, logits = cap.pop()
    assert logits is not None and sum(p.shape[1] for p in logits) == hidden.shape[1]
    reused, n = top_error(model, hidden, b["labels"], chunk, logits)
    rebuilt, m = top_error(model, hidden, b["labels"], chunk)
    return reused, rebuilt, int(n), int(m), len(logits)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_kept_logits_give_the_rebuilt_error(family):
    model = tiny_model(family)
    if family == "gemma3":
        model.config.final_logit_softcapping = 3.0  # small enough that the cap bends the tiny model's logits
    reused, rebuilt, n, m, _ = _both(model, _batch())
    assert n == m == int((_batch()["labels"][:, 1:] != -100).sum())
    assert rebuilt.abs().sum() > 0 and torch.allclose(reused, rebuilt, rtol=1e-4, atol=1e-6)


def test_sliced_loss_pieces_and_a_converted_head():
    model = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    assert linear_head_weight(model) is not None  # the spike input comes from the norm's encoder: the head is linear
    reused, rebuilt, _, _, pieces = _both(model, _batch(), max_logits_bytes=3 * 256 * 4 * 5)
    assert pieces > 1 and torch.allclose(reused, rebuilt, rtol=1e-4, atol=1e-6)


def test_a_head_with_a_submodule_is_not_taken_as_linear():
    model = tiny_model("llama")
    model.lm_head.add_module("hybridtune_input_transform", torch.nn.Identity())
    assert linear_head_weight(model) is None


def test_a_bfloat16_error_gemm_stays_close_and_a_resolved_top_is_the_same():
    """``error_dtype`` rounds only the GEMM through lm_head; ``norm`` / ``head`` passed in are the modules found."""
    from hybridtune.learners.eprop import final_norm

    model, b = tiny_model("llama"), _batch()
    with torch.no_grad(), TopCapture(model, keep_logits=True, norm=final_norm(model),
                                     head=model.get_output_embeddings()) as cap:
        model_nll(model, b)
        hidden, logits = cap.pop()
    exact, _ = top_error(model, hidden, b["labels"], 7, logits)
    resolved, _ = top_error(model, hidden, b["labels"], 7, logits, final_norm(model), model.get_output_embeddings())
    rounded, _ = top_error(model, hidden, b["labels"], 7, logits, error_dtype=torch.bfloat16)
    assert torch.equal(exact, resolved)
    assert not torch.equal(exact, rounded)
    rel = (rounded - exact).norm() / exact.norm()
    assert rel < 2e-2 and torch.nn.functional.cosine_similarity(rounded.flatten(), exact.flatten(), 0) > 0.999


def test_error_dtype_is_checked():
    from hybridtune.learners.eprop import EpropLearner

    with pytest.raises(ValueError, match="error_dtype.*float16.*bfloat16"):
        EpropLearner(error_dtype="float16")
