"""Helpers for trainer tests: tiny peft models, predictable token blocks, run configs, a tiny model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from hybridtune.config import RunConfig


def lora_model(family: str = "llama", r: int = 4, seed: int = 0, spiking: bool = False, **kwargs):
    """A tiny model with plain peft LoRA (or spiking LoRA) on q/v projections, initialised from ``seed``."""
    from hybridtune.testing import tiny_model

    torch.manual_seed(seed)
    targets = kwargs.pop("target_modules", ["q_proj", "v_proj", "up_proj", "down_proj"])
    if spiking:
        from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config

        return get_spiking_peft_model(tiny_model(family), spiking_lora_config(r=r, target_modules=targets, **kwargs))
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_model(family), LoraConfig(r=r, target_modules=targets, **kwargs))


def pattern_blocks(n: int = 32, length: int = 24, seed: int = 0, pad_every: int = 0) -> dict[str, torch.Tensor]:
    """Blocks of counting sequences (next id = previous + 1, mod 40): learnable in a few steps by a tiny LoRA.

    ``pad_every``: every so many blocks gets trailing padding of varying length (uneven token counts).
    """
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 40, (n, 1), generator=gen)
    ids = (start + torch.arange(length)) % 40 + 3
    mask = torch.ones_like(ids)
    if pad_every:
        for i in range(0, n, pad_every):
            mask[i, length - 1 - (i % (length // 2)):] = 0
    labels = ids.masked_fill(mask == 0, -100)
    doc_start = torch.zeros_like(ids, dtype=torch.bool)
    doc_start[:, 0] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "doc_start": doc_start}


def run_config(tmp_path, name: str = "run", **trainer) -> RunConfig:
    cfg = RunConfig()
    cfg.trainer.output_dir = str(tmp_path / name)
    cfg.trainer.steps, cfg.trainer.batch_size, cfg.trainer.eval_every, cfg.trainer.save_every = 6, 4, 3, 3
    cfg.trainer.scheduler = "constant"
    cfg.tracking.backend = "none"
    cfg.learners[0].lr = 1e-2
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n    y: int\n"


def tiny_model_dir(root: Path, family: str = "llama") -> Path:
    """A tiny model and the byte-level tokenizer saved as a local model directory (what ``model.name`` accepts)."""
    from hybridtune.testing import tiny_model, tiny_tokenizer

    path = root / f"tiny-{family}"
    if not path.is_dir():
        tiny_model(family).save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
    return path


def corpus_file(root: Path, docs: int = 120) -> Path:
    """A small text corpus of repetitive Python snippets, one paragraph per document."""
    path = root / "corpus.txt"
    parts = [TEXT.replace("add", f"add{i % 7}").replace("Point", f"Point{i % 5}") for i in range(docs)]
    path.write_text("\n\n".join(p.strip() for p in parts))
    return path


def tiny_run_yaml(root: Path, name: str = "run", **sections) -> Path:
    """A run config YAML on the tiny model directory and corpus file (sections override the defaults)."""
    import yaml

    data = {
        "model": {"name": str(tiny_model_dir(root))},
        "conversion": {"compensation": False},
        "adapter": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "learners": [{"name": "surrogate", "lr": 1e-2}],
        "data": {"train": str(corpus_file(root)), "block_size": 32, "eval_tokens": 256},
        "trainer": {"output_dir": str(root / name), "steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 2,
                    "scheduler": "constant"},
        "tracking": {"backend": "none"},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
