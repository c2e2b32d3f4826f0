"""Tiny configs per family: 2 layers, hidden 64, vocab 256 (the byte-level tiny tokenizer's size)."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "gemma3", "llama4", "qwen3", "gpt2")
VOCAB = 256

_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(family: str):
    """A ``transformers`` config for ``family`` small enough to run anywhere in milliseconds."""
    import transformers as tf

    decoder = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **_COMMON)
    if family == "llama":
        return tf.LlamaConfig(**decoder, tie_word_embeddings=False)
    if family == "qwen3":
        return tf.Qwen3Config(**decoder, tie_word_embeddings=True)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**decoder, sliding_window=8, query_pre_attn_scalar=16,
                                   layer_types=["sliding_attention", "full_attention"])
    if family == "llama4":
        # one dense layer and one MoE layer (4 routed experts, top-1, plus the shared expert)
        return tf.Llama4TextConfig(**decoder, intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1,
                                   interleave_moe_layer_step=2, attention_chunk_size=64, no_rope_layer_interval=2)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
    raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random-initialised causal LM of ``family`` (eval mode, ``dtype``), reproducible from ``seed``."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    config._attn_implementation = "eager" if family == "gemma3" else "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
