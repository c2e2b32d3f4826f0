"""Reset masks, LIF state carried through generation like a KV cache, and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hybridtune.adapters import reset_mask, sequence_context
from hybridtune.neurons import reset_state
from hybridtune.testing import tiny_batch


def test_reset_mask_rules():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    doc = torch.tensor([[False, False, False, False, True], [False, False, True, False, False]])
    # pads reset, the token after a pad resets, doc starts reset; no past: t = 0 needs no reset of its own
    assert reset_mask(mask, doc, 5).tolist() == [[True, True, True, False, True], [False, False, True, False, True]]
    # a generation step: the mask covers the past, only the last column is the call's token
    assert reset_mask(torch.tensor([[0, 1, 1], [1, 0, 1]]), None, 1).tolist() == [[False], [True]]
    assert reset_mask(None, None, 3) is None
    with pytest.raises(ValueError, match="doc_start must be"):
        reset_mask(None, torch.ones(2, 4, dtype=torch.bool), 3)


def _token_by_token(model, ids, mask=None):
    cache, logits = DynamicCache(), []
    reset_state(model)
    for t in range(ids.shape[1]):
        kwargs = {} if mask is None else {"attention_mask": mask[:, : t + 1]}
        out = model(input_ids=ids[:, t: t + 1], cache=cache, use_cache=True, **kwargs)
        logits.append(out.logits)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_token_by_token_equals_full_forward(family, make_spiking):
    model = make_spiking(family, "lif")
    ids = tiny_batch(seq=12)["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids).logits
        steps = _token_by_token(model, ids)
        without_state = model.base_model.model(input_ids=ids[:, -1:]).logits
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(without_state[:, -1], full[:, -1], atol=1e-4)  # the state does matter


def test_generate_with_left_padding_equals_full_forward(make_spiking):
    model = make_spiking("llama", "lif")
    ids = tiny_batch(seq=8)["input_ids"]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in the first row
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        seq = gen.sequences
        full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - 8, dtype=mask.dtype)], 1)
        full = model(input_ids=seq, attention_mask=full_mask).logits
    torch.testing.assert_close(torch.stack(gen.logits, 1), full[:, 7:-1], rtol=1e-4, atol=1e-4)


def test_padding_does_not_leak_into_the_state(make_spiking):
    model = make_spiking("llama", "lif")
    ids = tiny_batch(seq=6)["input_ids"][:1]
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        junk = torch.randint(3, 256, (1, 4))
        padded = model(input_ids=torch.cat([junk, ids], 1),
                       attention_mask=torch.cat([torch.zeros(1, 4), torch.ones(1, 6)], 1).long()).logits
    torch.testing.assert_close(padded[:, 4:], alone, rtol=1e-4, atol=1e-4)


def test_doc_start_resets_the_layer_state(make_spiking):
    torch.manual_seed(0)  # the carried state must be visible at position 6: don't depend on earlier tests' RNG use
    model = make_spiking("llama", "lif")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 10, layer.in_features)
    doc = torch.zeros(1, 10, dtype=torch.bool)
    doc[0, 6] = True
    with torch.no_grad():
        with sequence_context(model, doc_start=doc):
            packed = layer(x)
        second = layer(x[:, 6:])
        with sequence_context(model, steps=10):
            unreset = layer(x)
    torch.testing.assert_close(packed[:, 6:], second)
    assert not torch.allclose(unreset[:, 6:], second)


def test_doc_start_kwarg_reaches_layers_and_is_not_passed_on(make_spiking):
    model = make_spiking("qwen3", "lif")
    batch = tiny_batch(seq=8)
    doc = torch.zeros(2, 8, dtype=torch.bool)
    doc[:, 5] = True
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(m.sequence_info))
    with torch.no_grad():
        out = model(**batch, doc_start=doc).logits
    handle.remove()
    assert seen[0].reset[:, 5].all() and out.shape == (2, 8, 256)


def test_sequence_info_lives_only_for_the_call(make_spiking):
    model = make_spiking("llama", "lif")
    layers = [m for m in model.modules() if hasattr(m, "sequence_info")]
    batch = tiny_batch(seq=8)
    with torch.no_grad():
        model(**batch)
    assert layers and all(m.sequence_info is None for m in layers)
    with pytest.raises(IndexError), torch.no_grad():  # a call that fails half-way leaves nothing behind either
        model(input_ids=batch["input_ids"] + 10_000, attention_mask=batch["attention_mask"])
    assert all(m.sequence_info is None for m in layers)
    with sequence_context(model, steps=8) as info:  # a context's info comes back after the calls inside it
        with torch.no_grad():
            model(**batch)
        assert all(m.sequence_info is info for m in layers)
    assert all(m.sequence_info is None for m in layers)


def test_carried_state_refuses_batch_change(make_spiking):
    model = make_spiking("llama", "lif")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 4, layer.in_features)
    with torch.no_grad():
        layer(x)  # stores a [2, r] membrane
        with sequence_context(model, attention_mask=torch.ones(1, 1), carry=True):
            with pytest.raises(ValueError, match="beam search"):
                layer(x[:1, :1])


def test_state_is_carried_only_when_the_cache_holds_tokens(make_spiking):
    model = make_spiking("llama", "lif")
    ids = tiny_batch(seq=6)["input_ids"]
    with torch.no_grad():
        first = model(input_ids=ids).logits
        again = model(input_ids=ids).logits  # no cache: starts from zeros, not from the previous call's state
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("neuron", ["lif", "mt"])
def test_gradient_checkpointing_gives_same_gradients(neuron, make_spiking):
    def grads(checkpointing: bool):
        model = make_spiking("llama", neuron).train()
        if checkpointing:
            model.base_model.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        batch = tiny_batch(seq=10)
        mask = batch["attention_mask"].clone()
        mask[1, :3] = 0
        doc = torch.zeros(2, 10, dtype=torch.bool)
        doc[0, 4] = True
        out = model(input_ids=batch["input_ids"], attention_mask=mask, doc_start=doc, labels=batch["input_ids"])
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sequence_context_hands_doc_start_to_model_calls(make_spiking):
    from hybridtune.perplexity import perplexity

    model = make_spiking("llama", "lif")
    batch = tiny_batch(seq=8)
    doc = torch.zeros(2, 8, dtype=torch.bool)
    doc[:, 5] = True
    with torch.no_grad():
        want = model(**batch, doc_start=doc).logits
        with sequence_context(model, doc_start=doc):
            got = model(**batch).logits
        plain = model(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(plain, want)
    blocks = {**batch, "doc_start": doc}
    ppl_ctx = perplexity(model, blocks, batch_context=lambda b: sequence_context(model, doc_start=b["doc_start"]))
    ppl = perplexity(model, blocks)
    assert ppl_ctx["ppl"] != ppl["ppl"]
