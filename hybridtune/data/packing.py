"""Tokenise documents and pack them into fixed-length blocks that remember where each document starts.

Documents are concatenated in order (each followed by EOS by default) and cut into blocks of ``block_size``
tokens. Per position:

- ``input_ids`` [N, L] long; ``labels`` [N, L] long, equal to ``input_ids`` except -100 on padding (Hugging Face
  causal LMs shift labels themselves);
- ``attention_mask`` [N, L] long, 0 only on the padding of the final partial block;
- ``doc_start`` [N, L] bool, True at the first token of every document and at position 0 of every block: stateful
  neurons (LIF membranes) and STDP traces reset there. Padding is never a start.

No ``position_ids``: with packed blocks and the ordinary causal mask, a token attends across the document boundary
inside its block, so positions must keep counting (HF's default 0..L-1). Restarting them per document is only
right together with per-document attention (varlen flash attention), which the frozen base model does not use.

Example:
    >>> blocks = pack_token_ids([[5, 6, 7], [8, 9]], block_size=4, eos_id=0)
    >>> blocks.input_ids.tolist()
    [[5, 6, 7, 0], [8, 9, 0, 0]]
    >>> blocks.doc_start.tolist()
    [[True, False, False, False], [True, False, False, False]]
    >>> blocks.labels.tolist()[1], blocks.attention_mask.tolist()[1]
    ([8, 9, 0, -100], [1, 1, 1, 0])
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
FIELDS = ("input_ids", "attention_mask", "labels", "doc_start")
# Documents tokenised per tokenizer call: big enough for fast tokenizers' batching, small enough that a
# max_tokens cap stops tokenising soon after it is reached.
_TOKENIZE_BATCH = 64


@dataclass
class PackedBlocks:
    """Packed token blocks; index it for one block as a dict, or wrap it with :meth:`dataset`.

    ``meta`` records how the blocks were made (block size, documents and tokens used, EOS, caps).

    Example:
        >>> b = pack_token_ids([[1, 2, 3]], block_size=2, eos_id=9)
        >>> len(b), b.block_size, b.num_tokens
        (2, 2, 4)
        >>> b[1]["labels"].tolist()
        [3, 9]
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    doc_start: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    @property
    def num_targets(self) -> int:
        """Tokens a causal LM is scored on: real labels after the shift (position 0 of a block has no context).

        Example:
            >>> pack_token_ids([[1, 2, 3]], block_size=2, eos_id=9).num_targets
            2
        """
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int | str) -> Any:
        """``blocks[i]``: block i as a dict of [L] tensors; ``blocks["input_ids"]``: a whole [N, L] field."""
        if isinstance(index, str):
            if index not in FIELDS:
                raise KeyError(f"{index!r} is not a PackedBlocks field; fields: {', '.join(FIELDS)}")
            return getattr(self, index)
        return {name: getattr(self, name)[index] for name in FIELDS}

    def as_dict(self, fields: Sequence[str] = FIELDS) -> dict[str, torch.Tensor]:
        """The [N, L] tensors by name (what batch-slicing code and ``perplexity`` consume).

        Example:
            >>> sorted(pack_token_ids([[1, 2]], block_size=2).as_dict())
            ['attention_mask', 'doc_start', 'input_ids', 'labels']
        """
        return {name: self[name] for name in fields}

    def dataset(self, fields: Sequence[str] = FIELDS) -> PackedDataset:
        """A `torch.utils.data.Dataset` of per-block dicts (``fields`` picks the keys).

        Example:
            >>> ds = pack_token_ids([[1, 2, 3]], block_size=2, eos_id=9).dataset(("input_ids",))
            >>> list(ds[0])
            ['input_ids']
        """
        return PackedDataset(self, fields)


class PackedDataset(Dataset):
    """Map-style dataset over :class:`PackedBlocks`; items are dicts of [L] tensors, so torch's default collate
    stacks them into [B, L]. Drop ``doc_start`` before calling a Hugging Face model's forward (it is not a model
    argument): ``fields=("input_ids", "attention_mask", "labels")``, or pop it in the training step.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> ds = PackedDataset(pack_token_ids([[1, 2, 3, 4, 5]], block_size=3, eos_id=0))
        >>> next(iter(DataLoader(ds, batch_size=2)))["input_ids"].shape
        torch.Size([2, 3])
    """

    def __init__(self, blocks: PackedBlocks, fields: Sequence[str] = FIELDS) -> None:
        unknown = [f for f in fields if f not in FIELDS]
        if unknown or not fields:
            raise ValueError(f"unknown PackedDataset fields {unknown or list(fields)}; choose from {', '.join(FIELDS)}")
        self.blocks = blocks
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: getattr(self.blocks, name)[index] for name in self.fields}


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


def pack_token_ids(
    token_ids: Iterable[Sequence[int]],
    block_size: int,
    *,
    eos_id: int | None = None,
    bos_id: int | None = None,
    pad_id: int | None = None,
    drop_last: bool = False,
    max_tokens: int | None = None,
) -> PackedBlocks:
    """Pack already-tokenised documents (the pure core of :func:`pack`).

    Each document becomes ``[bos] + ids + [eos]`` (the specials only when their id is given); documents with no
    ids are skipped. The stream is cut at ``max_tokens`` (the first tokens, so the first blocks), then into blocks;
    the final partial block is padded with ``pad_id`` (default: ``eos_id``, else 0) unless ``drop_last``.

    Example:
        >>> pack_token_ids([[1, 2], [3]], block_size=3, bos_id=7, max_tokens=4).input_ids.tolist()
        [[7, 1, 2], [7, 0, 0]]
    """
    _check_int("block_size", block_size, 1)
    _check_int("max_tokens", max_tokens, 1, allow_none=True)
    pieces: list[torch.Tensor] = []
    starts: list[int] = []
    total = 0
    documents = 0
    stopped_early = False
    for ids in token_ids:
        if max_tokens is not None and total >= max_tokens:
            stopped_early = True  # more documents remain; leave them untokenised
            break
        if len(ids) == 0:
            continue
        doc = torch.as_tensor(list(ids), dtype=torch.long)
        if bos_id is not None:
            doc = torch.cat([doc.new_tensor([bos_id]), doc])
        if eos_id is not None:
            doc = torch.cat([doc, doc.new_tensor([eos_id])])
        starts.append(total)
        pieces.append(doc)
        total += doc.numel()
        documents += 1
    if total == 0:
        raise ValueError("nothing to pack: no document produced any token")
    stream = torch.cat(pieces)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n_real = stream.numel()
    n_blocks = n_real // block_size if drop_last else math.ceil(n_real / block_size)
    if n_blocks == 0:
        raise ValueError(f"no complete block of {block_size} tokens in {n_real} tokens with drop_last=True; "
                         "use drop_last=False, a smaller block_size or more data")
    n_slots = n_blocks * block_size
    stream = stream[:n_slots]
    pad_value = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    input_ids = torch.full((n_slots,), pad_value, dtype=torch.long)
    input_ids[: stream.numel()] = stream
    attention_mask = torch.zeros(n_slots, dtype=torch.long)
    attention_mask[: stream.numel()] = 1
    doc_start = torch.zeros(n_slots, dtype=torch.bool)
    start_idx = torch.tensor([s for s in starts if s < stream.numel()], dtype=torch.long)
    doc_start[start_idx] = True
    input_ids, attention_mask, doc_start = (t.view(n_blocks, block_size) for t in (input_ids, attention_mask, doc_start))
    doc_start[:, 0] = True  # every block is an independent sequence: state starts fresh
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    meta = {
        "block_size": block_size,
        "blocks": n_blocks,
        "documents": documents,
        "tokens": int(stream.numel()),
        "stream_tokens": total,
        "max_tokens": max_tokens,
        "truncated": stopped_early or stream.numel() < total,
        "drop_last": drop_last,
        "eos_id": eos_id,
        "bos_id": bos_id,
    }
    return PackedBlocks(input_ids, attention_mask, doc_start, labels, meta)


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    # Checked through sys.modules so that plain tokenizers never pay for importing transformers.
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(tokenizer, transformers.PreTrainedTokenizerBase)


def tokenize_documents(tokenizer: Any, documents: Iterable[str]) -> Iterator[list[int]]:
    """Token ids per document, without special tokens, tokenising lazily in small batches.

    ``tokenizer`` is any callable with the Hugging Face signature
    ``tokenizer(list[str], add_special_tokens=False) -> {"input_ids": list[list[int]]}``.

    Example:
        >>> class Chars:
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[ord(c) for c in t] for t in texts]}
        >>> list(tokenize_documents(Chars(), ["ab", "c"]))
        [[97, 98], [99]]
    """
    kwargs: dict[str, Any] = {"add_special_tokens": False}
    if _is_hf_tokenizer(tokenizer):
        kwargs["verbose"] = False  # documents longer than model_max_length are expected: we cut them into blocks
    batch: list[str] = []
    for doc in documents:
        if not isinstance(doc, str):
            raise TypeError(f"documents must be strings, got {type(doc).__name__}")
        batch.append(doc)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, **kwargs)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, **kwargs)["input_ids"]


def pack(
    tokenizer: Any,
    documents: Iterable[str],
    block_size: int,
    *,
    add_eos: bool = True,
    add_bos: bool = False,
    drop_last: bool = False,
    max_tokens: int | None = None,
) -> PackedBlocks:
    """Tokenise ``documents`` and pack them into ``block_size`` blocks (see the module docstring).

    ``add_eos`` appends ``tokenizer.eos_token_id`` to every document (the model sees where a document ends);
    ``add_bos`` prepends ``tokenizer.bos_token_id``. ``max_tokens`` keeps only the first tokens of the stream, and
    tokenising stops as soon as they are reached. Padding uses ``tokenizer.pad_token_id`` (else EOS, else 0).

    Example:
        >>> class Chars:
        ...     eos_token_id, pad_token_id = 0, None
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[ord(c) - 96 for c in t] for t in texts]}
        >>> pack(Chars(), ["abc", "de"], block_size=4).input_ids.tolist()
        [[1, 2, 3, 0], [4, 5, 0, 0]]
    """
    eos_id = getattr(tokenizer, "eos_token_id", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if add_eos and eos_id is None:
        raise ValueError(f"add_eos=True but tokenizer {type(tokenizer).__name__} has no eos_token_id; "
                         "pass add_eos=False or set one")
    if add_bos and bos_id is None:
        raise ValueError(f"add_bos=True but tokenizer {type(tokenizer).__name__} has no bos_token_id; "
                         "pass add_bos=False or set one")
    blocks = pack_token_ids(
        tokenize_documents(tokenizer, documents),
        block_size,
        eos_id=eos_id if add_eos else None,
        bos_id=bos_id if add_bos else None,
        pad_id=pad_id if pad_id is not None else eos_id,
        drop_last=drop_last,
        max_tokens=max_tokens,
    )
    blocks.meta.update(add_eos=add_eos, add_bos=add_bos)
    return blocks
