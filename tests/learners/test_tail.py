"""A tail replay (blocks from ``first`` up, final norm, lm_head) gives the model call's logits, bit for bit."""

from __future__ import annotations

import pytest
import torch

from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.conversion import ConversionConfig, convert
from hybridtune.learners.tail import TailCapture, decoder_blocks
from hybridtune.neurons import reset_state
from hybridtune.testing import FAMILIES, tiny_batch, tiny_model

KEYS = ("input_ids", "attention_mask", "doc_start")
FULL = ("ffn_act", "linear_inputs", "attention", "norms")


def padded_batch():
    b = tiny_batch(batch=3, seq=12, seed=2)
    b["attention_mask"][0, :3] = 0  # left padding
    b["doc_start"] = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    b["doc_start"][:, 0] = True
    b["doc_start"][1, 5] = True  # a packed second document
    return b


def spiking_model(family, coverage=FULL):
    torch.manual_seed(0)
    base = convert(tiny_model(family), ConversionConfig(coverage=coverage, compensation=False))
    cfg = spiking_lora_config(r=4, neuron="lif", threshold=0.02, init_b_std=0.05,
                              target_modules=["c_attn", "c_proj"] if family == "gpt2" else ["v_proj", "down_proj"])
    return get_spiking_peft_model(base, cfg)


def logits_and_replay(model, batch, first):
    kwargs = {k: batch[k] for k in KEYS if k in batch}
    with torch.no_grad(), TailCapture(model, first=first) as tail:
        reset_state(model)
        logits = model(**kwargs).logits
        reset_state(model)
        replayed = tail.replay(tail.pop(), batch["attention_mask"], batch.get("doc_start"))
    return logits, replayed


@pytest.mark.parametrize("spiking", [False, True], ids=["plain", "spiking"])
@pytest.mark.parametrize("family", FAMILIES)
def test_replay_equals_the_model_call_from_every_block(family, spiking):
    """Plain models, and converted bases with LIF adapters (state reset at padding and document starts, so the replay
    must see the same resets), from every block."""
    model, batch = (spiking_model(family), padded_batch()) if spiking else (tiny_model(family), tiny_batch())
    for first in range(len(decoder_blocks(model))):
        logits, replayed = logits_and_replay(model, batch, first)
        assert torch.equal(logits, replayed), (family, first)


def test_replay_applies_hooks_of_the_tail_and_not_of_the_blocks_below():
    """A perturbation hooked on a tail module moves the replay as it moves a model call; one below does not."""
    model, batch = spiking_model("llama"), padded_batch()
    blocks = decoder_blocks(model)
    kwargs = {k: batch[k] for k in KEYS}
    with torch.no_grad(), TailCapture(model, first=1) as tail:
        clean = model(**kwargs).logits
        call = tail.pop()
        top = blocks[1].mlp.down_proj.register_forward_hook(lambda m, a, out: out + 0.5)
        try:
            hooked = model(**kwargs).logits
            tail.pop()
            replayed = tail.replay(call, batch["attention_mask"], batch["doc_start"])
        finally:
            top.remove()
        low = blocks[0].mlp.down_proj.register_forward_hook(lambda m, a, out: out + 0.5)
        try:
            assert torch.equal(tail.replay(call, batch["attention_mask"], batch["doc_start"]), clean)
        finally:
            low.remove()
    assert not torch.equal(hooked, clean)
    assert torch.equal(replayed, hooked)


def test_capture_keeps_one_call_per_model_call_and_none_during_replay():
    model, batch = tiny_model("llama"), tiny_batch()
    with torch.no_grad(), TailCapture(model, first=1) as tail:
        model(**batch)
        model(**batch)
        first = tail.pop()
        tail.replay(first, batch["attention_mask"])
        tail.pop()
        with pytest.raises(RuntimeError, match="no model call reached the tail"):
            tail.pop()


def test_kv_caches_are_not_kept():
    model, batch = tiny_model("llama"), tiny_batch()
    with torch.no_grad(), TailCapture(model, first=0) as tail:
        out = model(**batch, use_cache=True)
        call = tail.pop()
        for args, kwargs in call.calls:
            assert all(not hasattr(v, "get_seq_length") for v in (*args, *kwargs.values()))
        assert torch.equal(tail.replay(call, batch["attention_mask"]), out.logits)


def test_bad_first_block_and_models_without_blocks_are_rejected():
    with pytest.raises(ValueError, match="block 5 is not one of the model's 2 blocks"):
        TailCapture(tiny_model("llama"), first=5)
    with pytest.raises(ValueError, match="no numbered decoder blocks"):
        decoder_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
