"""How much of the learning rate each block's adapters get: local learning signals are trustworthy only near the top.

Used by ``eprop`` (the broadcast error) and ``rstdp`` (node perturbation: fewer perturbed units, less variance).
The top error ``g = ∂loss/∂h_top`` is the exact learning signal of a residual writer in the *last* block. A writer
``k`` blocks further down changes the stream that ``k`` frozen blocks then read, and the identity path ignores what
they do with it: on the converted default model (30 blocks, r = 8, one batch of 4 × 128 python-docs tokens) the
cosine between the ``residual`` estimate of ``lora_B`` and its true gradient is 1.0 in the last block, 0.3–0.7 in the
top ten, and ≈ 0 (−0.05 … +0.05) in the bottom half — while the true gradient is largest there. With Adam every
coordinate moves by about ``lr`` per step whatever its estimate's quality, so the bottom blocks, driven by a
consistent but wrong direction, dominate the change and the model diverges.

:func:`depth_weights` therefore scales the learning rate of block ``l`` of ``n`` (``k = n − 1 − l`` blocks below the
top) by ``block_decay ** k``, and gives the blocks below the top ``top_blocks`` none at all (their estimates are not
even computed). Parameters outside any numbered block count as the top.

Example:
    >>> depth_weights(["m.layers.0.o_proj.lora_B", "m.layers.2.o_proj.lora_B", "m.layers.3.o_proj.lora_B"], 4,
    ...               top_blocks=3, block_decay=0.5)
    {'m.layers.0.o_proj.lora_B': 0.0, 'm.layers.2.o_proj.lora_B': 0.5, 'm.layers.3.o_proj.lora_B': 1.0}
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["block_index", "count_blocks", "depth_weights"]

# the numbered block containers of the supported families: layers.N (Llama-likes), h.N (GPT-2), blocks.N
_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")


def block_index(name: str) -> int | None:
    """The number of the decoder block a parameter or module name lies in (None outside any block)."""
    found = _BLOCK.findall(name)
    return int(found[-1]) if found else None


def count_blocks(model: nn.Module) -> int:
    """How many numbered decoder blocks ``model`` has (the highest block index + 1; 0 if none)."""
    indices = [i for i in (block_index(name) for name, _ in model.named_modules()) if i is not None]
    return max(indices) + 1 if indices else 0


def depth_weights(names: Iterable[str], n_blocks: int, top_blocks: int | None = None,
                  block_decay: float = 1.0) -> dict[str, float]:
    """The learning-rate multiplier of each parameter: ``block_decay ** k`` for a parameter ``k`` blocks below the top
    block, 0 when ``k >= top_blocks`` (None: every block learns)."""
    out = {}
    for name in names:
        index = block_index(name)
        below = 0 if index is None else max(n_blocks - 1 - index, 0)
        out[name] = 0.0 if top_blocks is not None and below >= top_blocks else float(block_decay) ** below
    return out
