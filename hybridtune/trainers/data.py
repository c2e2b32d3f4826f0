"""Training and held-out blocks from the run config's ``data`` section (built-in domains or user files).

Example:
    >>> from hybridtune.config import DataSection
    >>> from hybridtune.testing import tiny_tokenizer
    >>> train, held, info = build_data(DataSection(train="unicode-names", block_size=64, eval_tokens=256,
    ...                                            max_train_tokens=1024), tiny_tokenizer())
    >>> (train.input_ids.shape, held.num_tokens, info["eval_split"])
    (torch.Size([16, 64]), 256, 'eval')
"""

from __future__ import annotations

from typing import Any

from ..config import DataSection
from ..config_schema import ConfigError


def open_corpus(name: str, text_field: str = "text", key: str = "data.train", sample_by: str | None = None,
                encoding: str = "utf-8"):
    """A built-in domain or a user path; ``text_field`` applies to jsonl / parquet, ``sample_by`` / ``encoding`` to
    text. Errors name ``key``."""
    from ..data import CorpusError, corpus, corpus_options

    options = corpus_options(name, text_field=text_field, sample_by=sample_by, encoding=encoding)
    try:
        return corpus(name, **options)
    except CorpusError as exc:
        raise ConfigError(str(exc), key) from None


def open_corpora(section: DataSection) -> tuple[Any, Any]:
    """The training and held-out corpora of the ``data`` section (the same object when ``data.eval`` is null)."""
    txt = {"sample_by": section.sample_by, "encoding": section.encoding}
    train_c = open_corpus(section.train, section.text_field, "data.train", **txt)
    return train_c, open_corpus(section.eval, section.text_field, "data.eval", **txt) if section.eval else train_c


def build_data(section: DataSection, tokenizer: Any, corpora: tuple[Any, Any] | None = None
               ) -> tuple[Any, Any, dict[str, Any]]:
    """Packed train and held-out blocks plus what describes them (names, content hashes, token counts).

    The held-out blocks come from the ``eval`` split of ``data.train``, or from all of ``data.eval`` when a separate
    corpus is named; at most ``data.eval_tokens`` tokens are used.
    """
    from ..data import pack

    train_c, eval_c = corpora if corpora is not None else open_corpora(section)
    eval_split = "all" if section.eval else "eval"
    train = pack(tokenizer, train_c.documents("train"), section.block_size, max_tokens=section.max_train_tokens)
    held = pack(tokenizer, eval_c.documents(eval_split), section.block_size, max_tokens=section.eval_tokens)
    if len(held) == 0:
        raise ConfigError(f"the held-out split of {eval_c.name!r} is empty; name a corpus with data.eval", "data.eval")
    info = {"train": train_c.name, "train_hash": train_c.content_hash("train"), "train_blocks": len(train),
            "train_tokens": train.num_tokens, "eval": eval_c.name, "eval_split": eval_split,
            "eval_hash": eval_c.content_hash(eval_split), "eval_tokens": held.num_tokens,
            "block_size": section.block_size}
    return train, held, info


__all__ = ["open_corpus", "open_corpora", "build_data"]
