"""Tiny random-initialised models of every supported family, and a tokenizer that needs no download.

Every test suite builds on these, so they are deterministic (seeded) and small enough for a 2-core CPU.

Example:
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> model = tiny_model("llama")
    >>> model(**tiny_batch()).logits.shape
    torch.Size([2, 16, 256])
"""

from __future__ import annotations

from .models import FAMILIES, tiny_config, tiny_model
from .tokenizer import tiny_batch, tiny_tokenizer

__all__ = ["FAMILIES", "tiny_config", "tiny_model", "tiny_tokenizer", "tiny_batch"]
