"""Which blocks each rank reads at each micro-batch: a pure function of (seed, cursor), so the data position of a
run is one integer and resuming needs no iterator state.

Every epoch is a seeded permutation of the block indices. A *global micro-batch* is ``batch_size * world`` blocks of
it; rank ``r`` reads its ``batch_size`` slice. The cursor counts global micro-batches since the start of training;
the last partial global micro-batch of an epoch is dropped so every rank always gets a full one. The same seed, the
same blocks, and the same ``batch_size * world`` give the same global batches whatever the gradient-accumulation
split, which is what makes k micro-batches of b comparable to one of k*b.

Example:
    >>> s = BlockSampler(num_blocks=10, batch_size=2, world_size=2, rank=1, seed=0)
    >>> s.per_epoch
    2
    >>> len(s.indices(cursor=0)), s.epoch_of(cursor=3)
    (2, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


class DataTooSmallError(ValueError):
    """Fewer blocks than one global micro-batch needs."""


@dataclass(frozen=True)
class BlockSampler:
    num_blocks: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_epoch < 1:
            raise DataTooSmallError(
                f"{self.num_blocks} training block(s) cannot fill one global micro-batch of batch_size "
                f"{self.batch_size} x {self.world_size} process(es); use more data, a smaller "
                f"trainer.batch_size or a smaller data.block_size")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def per_epoch(self) -> int:
        """Global micro-batches per epoch."""
        return self.num_blocks // (self.batch_size * self.world_size)

    def epoch_of(self, cursor: int) -> int:
        return cursor // self.per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_blocks, generator=gen)

    def global_indices(self, cursor: int) -> torch.Tensor:
        """All ranks' blocks of global micro-batch ``cursor``."""
        perm = self.permutation(self.epoch_of(cursor))
        start = (cursor % self.per_epoch) * self.global_batch
        return perm[start:start + self.global_batch]

    def indices(self, cursor: int) -> torch.Tensor:
        """This rank's blocks of global micro-batch ``cursor``."""
        g = self.global_indices(cursor)
        return g[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def as_tensors(data) -> dict[str, torch.Tensor]:
    """``PackedBlocks`` (or any mapping of [N, L] tensors) -> dict with ``input_ids``, ``attention_mask``,
    ``labels`` (-100 on padding) and ``doc_start`` when present."""
    if isinstance(data, Mapping):
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    else:
        tensors = {k: getattr(data, k) for k in ("input_ids", "attention_mask", "labels", "doc_start")
                   if isinstance(getattr(data, k, None), torch.Tensor)}
    if "input_ids" not in tensors:
        raise ValueError("training / evaluation data needs 'input_ids' [N, L] (e.g. hybridtune.data.pack(...))")
    ids = tensors["input_ids"]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [N, L], got shape {tuple(ids.shape)}")
    tensors.setdefault("attention_mask", torch.ones_like(ids))
    if "labels" not in tensors:
        tensors["labels"] = ids.masked_fill(tensors["attention_mask"] == 0, -100)
    return tensors


def select(tensors: Mapping[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in tensors.items()}


__all__ = ["BlockSampler", "DataTooSmallError", "as_tensors", "select"]
