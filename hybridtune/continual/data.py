"""The domains of a continual run: packed training and held-out blocks per domain, in training order.

Each domain is opened and packed exactly as the domain-adaptation pipeline does it (:func:`.data.open_corpus`,
:func:`.data.build_data`; the run's ``data`` section gives block size, token budgets and ``text_field``), so a
continual stage on domain ``d`` sees the same blocks as ``hybridtune train`` with ``data.train=d``.

Example:
    >>> import torch
    >>> d = Domain.from_blocks("counting", {"input_ids": torch.arange(8).view(2, 4)}, {"input_ids": torch.ones(1, 4)})
    >>> d.name, sorted(d.train)
    ('counting', ['attention_mask', 'input_ids', 'labels'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

import torch

from hybridtune.config import DataSection
from hybridtune.config_schema import ConfigError
from hybridtune.trainers.sampler import as_tensors


@dataclass
class Domain:
    """One stage's data: ``train`` and ``held`` are mappings of ``[N, L]`` tensors (see ``sampler.as_tensors``)."""

    name: str
    train: dict[str, torch.Tensor]
    held: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_blocks(cls, name: str, train: Any, held: Any, info: dict[str, Any] | None = None) -> Domain:
        """From ``PackedBlocks`` or mappings of tensors (``attention_mask`` / ``labels`` filled in when absent)."""
        return cls(name=name, train=as_tensors(train), held=as_tensors(held), info=dict(info or {}))


def short_name(name: str) -> str:
    """A corpus name for tables and metric keys: a path becomes its file (or directory) name without suffix."""
    if "/" in name or "\\" in name:
        path = PurePath(name.rstrip("/\\"))
        return path.stem or path.name or name
    return name


def domain_labels(names: Sequence[str]) -> list[str]:
    """Unique display labels (paths shortened by :func:`short_name`): a domain that appears again in the sequence
    gets ``#2``, ``#3``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in map(short_name, names):
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def open_domain_corpora(names: Sequence[str], data: DataSection) -> list[Any]:
    """Open every domain's corpus (fails fast, naming ``continual.domains[i]``, before any model work)."""
    from hybridtune.trainers.data import open_corpus

    return [open_corpus(name, data.text_field, f"continual.domains[{i}]") for i, name in enumerate(names)]


def build_domains(names: Sequence[str], data: DataSection, tokenizer: Any,
                  corpora: Sequence[Any] | None = None) -> list[Domain]:
    """Pack every domain: training blocks from its ``train`` split, held-out blocks from its ``eval`` split."""
    from hybridtune.trainers.data import build_data

    corpora = list(corpora) if corpora is not None else open_domain_corpora(names, data)
    labels = domain_labels([c.name for c in corpora])
    out = []
    for i, (name, corp) in enumerate(zip(names, corpora)):
        section = replace(data, train=name, eval=None)
        try:
            train, held, info = build_data(section, tokenizer, (corp, corp))
        except ConfigError as exc:
            raise ConfigError(f"domain {name!r}: {exc.detail}", f"continual.domains[{i}]") from None
        if len(train) == 0:
            raise ConfigError(f"domain {name!r} has no training blocks of data.block_size={data.block_size}",
                              f"continual.domains[{i}]")
        out.append(Domain.from_blocks(labels[i], train, held, info))
    return out


__all__ = ["Domain", "short_name", "domain_labels", "open_domain_corpora", "build_domains"]
