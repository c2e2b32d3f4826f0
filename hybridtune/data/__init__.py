"""Corpora and packing: built-in domains from the Python install, user files, fixed-length token blocks.

Example:
    >>> from hybridtune.data import corpus, pack
    >>> c = corpus("python-docs")
    >>> class Bytes:
    ...     eos_token_id, pad_token_id = 0, None
    ...     def __call__(self, texts, add_special_tokens=False):
    ...         return {"input_ids": [list(t.encode()) for t in texts]}
    >>> blocks = pack(Bytes(), c.documents("eval"), block_size=128, max_tokens=1000)
    >>> blocks.input_ids.shape, blocks.num_tokens
    (torch.Size([8, 128]), 1000)
"""

from __future__ import annotations

from .builtin import BUILTIN_CORPORA, python_code, python_docs, unicode_names
from .corpus import SPLITS, Corpus, CorpusError, Document, content_hash, split_score
from .packing import IGNORE_INDEX, PackedBlocks, PackedDataset, pack, pack_token_ids, tokenize_documents
from .registry import available_corpora, corpus, corpus_options, register_corpus, unregister_corpus
from .user import from_dataset, user_corpus

__all__ = [
    "BUILTIN_CORPORA",
    "IGNORE_INDEX",
    "SPLITS",
    "Corpus",
    "CorpusError",
    "Document",
    "PackedBlocks",
    "PackedDataset",
    "available_corpora",
    "content_hash",
    "corpus",
    "corpus_options",
    "from_dataset",
    "pack",
    "pack_token_ids",
    "python_code",
    "python_docs",
    "register_corpus",
    "split_score",
    "tokenize_documents",
    "unicode_names",
    "unregister_corpus",
    "user_corpus",
]
