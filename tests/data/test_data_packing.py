"""Packing: golden values, document boundaries, padding, caps, and a list-based reference held against it."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

from hybridtune.data import IGNORE_INDEX, PackedDataset, corpus, pack, pack_token_ids


class CharTokenizer:
    """Character-level tokenizer with the Hugging Face call signature; counts the texts it tokenises."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens is False
        self.seen += len(texts)
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


A, B, C, D, E, F, G = (ord(c) for c in "abcdefg")
EOS, PAD, BOS = 1, 0, 2


def reference_pack(docs, block_size, eos=None, bos=None, pad=0, drop_last=False, max_tokens=None):
    """Plain-list packing, written independently of the tensor version."""
    stream, starts = [], []
    for ids in docs:
        if not ids:
            continue
        if max_tokens is not None and len(stream) >= max_tokens:
            break
        piece = ([bos] if bos is not None else []) + list(ids) + ([eos] if eos is not None else [])
        starts += [True] + [False] * (len(piece) - 1)
        stream += piece
    if max_tokens is not None:
        stream, starts = stream[:max_tokens], starts[:max_tokens]
    rows = []
    for i in range(0, len(stream), block_size):
        ids, st = stream[i:i + block_size], starts[i:i + block_size]
        if len(ids) < block_size and drop_last:
            break
        n_pad = block_size - len(ids)
        rows.append({
            "input_ids": ids + [pad] * n_pad,
            "attention_mask": [1] * len(ids) + [0] * n_pad,
            "doc_start": [True] + st[1:] + [False] * n_pad,
            "labels": ids + [IGNORE_INDEX] * n_pad,
        })
    return rows


def as_rows(blocks):
    return [{k: v.tolist() for k, v in blocks[i].items()} for i in range(len(blocks))]


def test_golden_blocks():
    blocks = pack(CharTokenizer(), ["abc", "de", "fg"], block_size=4)
    assert blocks.input_ids.tolist() == [[A, B, C, EOS], [D, E, EOS, F], [G, EOS, PAD, PAD]]
    assert blocks.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert blocks.doc_start.tolist() == [
        [True, False, False, False],
        [True, False, False, True],
        [True, False, False, False],
    ]
    assert blocks.labels.tolist() == [[A, B, C, EOS], [D, E, EOS, F], [G, EOS, IGNORE_INDEX, IGNORE_INDEX]]
    assert (blocks.input_ids.dtype, blocks.attention_mask.dtype, blocks.labels.dtype) == (torch.long,) * 3
    assert blocks.doc_start.dtype == torch.bool
    assert (len(blocks), blocks.block_size, blocks.num_tokens, blocks.num_targets) == (3, 4, 10, 7)
    assert blocks.meta["documents"] == 3 and blocks.meta["truncated"] is False


def test_boundary_mid_block_and_block_start_not_a_document_start():
    blocks = pack(CharTokenizer(), ["abcdefg", "ab"], block_size=3)
    # stream: a b c | d e f | g EOS a | b EOS -  (second document starts at index 2 of block 2)
    assert blocks.doc_start.tolist() == [
        [True, False, False],
        [True, False, False],  # forced start: a new block is a new sequence, though mid-document
        [True, False, True],
        [True, False, False],
    ]
    assert blocks.labels[-1].tolist() == [B, EOS, IGNORE_INDEX]
    assert not blocks.doc_start[blocks.attention_mask == 0].any()  # padding never resets anything


def test_options():
    tok = CharTokenizer()
    assert pack(tok, ["ab", "c"], 2, add_eos=False).input_ids.tolist() == [[A, B], [C, PAD]]
    assert pack(tok, ["ab", "c"], 4, add_bos=True).input_ids.tolist() == [[BOS, A, B, EOS], [BOS, C, EOS, PAD]]
    dropped = pack(tok, ["abc", "de", "fg"], 4, drop_last=True)
    assert dropped.input_ids.tolist() == [[A, B, C, EOS], [D, E, EOS, F]]
    assert dropped.meta["truncated"] is True and dropped.num_tokens == 8
    capped = pack(tok, ["abc", "de", "fg"], 4, max_tokens=6)
    assert capped.input_ids.tolist() == [[A, B, C, EOS], [D, E, PAD, PAD]]
    assert capped.num_tokens == 6 and capped.meta["truncated"] is True
    assert capped.meta["add_eos"] is True and capped.meta["add_bos"] is False


def test_max_tokens_takes_first_blocks_and_stops_tokenising():
    docs = [f"document {i} " * 3 for i in range(2000)]
    full = pack(CharTokenizer(), docs[:200], 64)
    tok = CharTokenizer()
    capped = pack(tok, docs, 64, max_tokens=64 * 5)
    assert len(capped) == 5 and capped.num_tokens == 320
    assert torch.equal(capped.input_ids, full.input_ids[:5])
    assert torch.equal(capped.doc_start, full.doc_start[:5])
    assert tok.seen <= 64  # one tokenizer batch was enough: the rest of the 2000 documents were never touched


def test_matches_reference_on_random_cases():
    rng = random.Random(0)
    for _ in range(300):
        docs = [[rng.randrange(3, 50) for _ in range(rng.choice([0, 1, 2, 5, 17]))] for _ in range(rng.randint(1, 8))]
        if not any(docs):
            docs.append([7])
        block = rng.randint(1, 9)
        eos = rng.choice([None, EOS])
        bos = rng.choice([None, BOS])
        drop_last = rng.random() < 0.3
        max_tokens = rng.choice([None, rng.randint(1, 40)])
        expected = reference_pack(docs, block, eos, bos, eos if eos is not None else 0, drop_last, max_tokens)
        if not expected:
            with pytest.raises(ValueError, match="no complete block"):
                pack_token_ids(docs, block, eos_id=eos, bos_id=bos, drop_last=drop_last, max_tokens=max_tokens)
            continue
        got = pack_token_ids(docs, block, eos_id=eos, bos_id=bos, drop_last=drop_last, max_tokens=max_tokens)
        assert as_rows(got) == expected, (docs, block, eos, bos, drop_last, max_tokens)


def test_errors():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        pack(tok, ["abc"], 0)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1 or None"):
        pack(tok, ["abc"], 4, max_tokens=0)
    with pytest.raises(ValueError, match="nothing to pack"):
        pack(tok, [], 4)
    with pytest.raises(ValueError, match="no complete block of 8 tokens in 4 tokens"):
        pack(tok, ["abc"], 8, drop_last=True)
    with pytest.raises(TypeError, match="documents must be strings"):
        pack(tok, [b"bytes"], 4)

    class NoEos(CharTokenizer):
        eos_token_id = None
        bos_token_id = None

    with pytest.raises(ValueError, match="no eos_token_id"):
        pack(NoEos(), ["abc"], 4)
    with pytest.raises(ValueError, match="no bos_token_id"):
        pack(NoEos(), ["abc"], 4, add_eos=False, add_bos=True)
    assert pack(NoEos(), ["abc"], 4, add_eos=False).input_ids.tolist() == [[A, B, C, PAD]]


def test_dataset_and_collate():
    blocks = pack(CharTokenizer(), ["abcdef", "gh"], block_size=4)
    ds = blocks.dataset()
    assert len(ds) == len(blocks) == 3
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "doc_start"}
    assert batch["input_ids"].shape == (2, 4) and batch["doc_start"].dtype == torch.bool
    assert torch.equal(batch["labels"], blocks.labels[:2])
    model_only = PackedDataset(blocks, ("input_ids", "attention_mask", "labels"))
    assert "doc_start" not in model_only[0]
    with pytest.raises(ValueError, match="unknown PackedDataset fields"):
        PackedDataset(blocks, ("position_ids",))


def test_field_access_and_as_dict():
    blocks = pack(CharTokenizer(), ["abcdef", "gh"], block_size=4)
    tensors = blocks.as_dict()
    assert list(tensors) == ["input_ids", "attention_mask", "labels", "doc_start"]
    for name, tensor in tensors.items():
        assert tensor is getattr(blocks, name) and blocks[name] is tensor and tensor.shape == (3, 4)
    assert list(blocks.as_dict(("input_ids",))) == ["input_ids"]
    assert blocks[1]["input_ids"].tolist() == [E, F, EOS, G]
    with pytest.raises(KeyError, match="not a PackedBlocks field"):
        blocks["position_ids"]


def test_pack_builtin_corpus_eval_split():
    docs = corpus("python-docs").documents("eval")
    blocks = pack(CharTokenizer(), docs, 256, max_tokens=4096)
    assert blocks.input_ids.shape == (16, 256) and blocks.num_tokens == 4096
    assert blocks.meta["documents"] >= 1


def test_hugging_face_tokenizer_without_length_warning(monkeypatch):
    # documents longer than model_max_length are normal here (they are cut into blocks), so pack must call the
    # tokenizer with verbose=False, which silences transformers' "longer than the specified maximum" warning
    testing = pytest.importorskip("hybridtune.testing")
    tok = testing.tiny_tokenizer()
    tok.model_max_length = 64
    long_doc = "some text " * 20
    calls = []
    original = type(tok).__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", spy)
    blocks = pack(tok, [long_doc, "short"], 128)
    assert calls and all(c.get("verbose") is False for c in calls)
    assert blocks.meta["documents"] == 2
    expected = original(tok, [long_doc, "short"], add_special_tokens=False)["input_ids"]
    stream = expected[0] + [tok.eos_token_id] + expected[1] + [tok.eos_token_id]
    assert blocks.input_ids[blocks.attention_mask.bool()].tolist() == stream
    assert blocks.input_ids[blocks.attention_mask == 0].eq(tok.pad_token_id).all()
