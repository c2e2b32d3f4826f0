"""A byte-level tokenizer with a 256-entry vocabulary, built in memory (no download, no training)."""

from __future__ import annotations

import torch

SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2}


def tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` mapping printable bytes to ids 3..255 (unknown bytes to a shared id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIALS)
    # bytes 32..126 and newline/tab get ids of their own; everything else maps to <unk>
    chars = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
    for ch in chars:
        vocab[ch] = len(vocab)
    vocab["<unk>"] = len(vocab)
    while len(vocab) < 256:  # pad the vocabulary to the tiny models' size with unused ids
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_batch(vocab: int = 256, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ``input_ids`` (avoiding the special ids) with a full ``attention_mask``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
