"""Every check of a run config that needs no model load: ``hybridtune validate`` runs them, and ``train``,
``quickstart`` and ``continual`` run the same ones before touching the output directory.

- learner names and options (the learners are built; building one allocates nothing);
- the model name (a local lookup: ``default``, a path, or a hub id in the local cache; "did you mean");
- the data paths, and whether the training text can fill one step at all (an upper bound from its size in bytes;
  the exact count comes from :func:`check_data_size` once it is tokenised, still before the model loads);
- against the model's *structure* (its config on the meta device: no weights, cached per model file):
  ``adapter.target_modules`` exist and are linear layers, ``adapter.r`` fits them, ``data.block_size`` fits the
  model's positions, and the estimated training memory is not far beyond this machine's.

Every failure is a :class:`~hybridtune.config_schema.ConfigError` naming the key and what to change.

Example:
    >>> from hybridtune.config import load_config
    >>> preflight(load_config(None, ["learners.0.name=stdpp"]), structure=False)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hybridtune.config_schema.ConfigError: learners[0].name: ...did you mean 'stdp'?...
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .config_schema import ConfigError

# Refuse a run whose estimated memory exceeds this multiple of the machine's (a rough estimate: refuse only what
# cannot possibly fit).
MEMORY_MARGIN = 2.0
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelFacts:
    """What the checks need to know about a model, read from its config (no weights)."""

    model_type: str
    max_positions: int | None
    parameters: int
    hidden: int
    layers: int
    vocab: int
    linears: dict[str, list[int]] = field(default_factory=dict)  # module name -> [in_features, out_features]


@dataclass
class Preflight:
    """The outcome: notes to print (how the data was split, sizes) and the model facts when read."""

    notes: list[str] = field(default_factory=list)
    facts: ModelFacts | None = None
    train_bytes: int = 0


def _facts_cache(label: str) -> Path:
    from .trainers.cache import cache_root

    return cache_root() / "model-facts" / (hashlib.sha256(label.encode()).hexdigest()[:16] + ".json")


def _source_label(name: str) -> str:
    """A key that changes when the model files change (path, size and mtime of its config or GGUF)."""
    from .models import resolve_source

    src = resolve_source(name)
    path = Path(src.path) / (src.gguf_file or "config.json")
    stat = path.stat() if path.is_file() else None
    return f"{path}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}"


def model_facts(name: str) -> ModelFacts:
    """The structure of model ``name``: built on the meta device from its config, cached under the conversion
    cache root (``model-facts/``) because reading a GGUF header takes seconds."""
    label = _source_label(name)
    cached = _facts_cache(label)
    if cached.is_file():
        try:
            return ModelFacts(**json.loads(cached.read_text()))
        except (ValueError, TypeError):
            pass  # a damaged entry is rebuilt below
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import _offline_kwargs, resolve_source

    src = resolve_source(name)
    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    config = AutoConfig.from_pretrained(src.path, **kwargs, **_offline_kwargs())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linears[module_name] = [module.in_features, module.out_features]
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight [in, out]
            linears[module_name] = [int(module.weight.shape[0]), int(module.nf)]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    facts = ModelFacts(model_type=config.model_type, max_positions=positions,
                       parameters=sum(p.numel() for p in model.parameters()),
                       hidden=int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0)),
                       layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
                       vocab=int(getattr(text, "vocab_size", 0)), linears=linears)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(facts)))
    tmp.replace(cached)
    return facts


def _targeted(facts: ModelFacts, target: str) -> list[str]:
    # peft's rule for a list of names: the module's full name, or its name ending in "." + target
    return [n for n in facts.linears if n == target or n.endswith("." + target)]


def check_structure(cfg: RunConfig, facts: ModelFacts, world_size: int = 1) -> None:
    """Target modules, rank, block size and memory against the model's structure (see the module docstring)."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in facts.linears})
    shapes = []
    for i, target in enumerate(cfg.adapter.target_modules):
        hits = _targeted(facts, target)
        if not hits:
            match = difflib.get_close_matches(target, suffixes, n=1, cutoff=0.5)
            hint = f"did you mean '{match[0]}'? " if match else ""
            raise ConfigError(f"got {target!r}: no linear layer of this {facts.model_type} model has that name; "
                              f"{hint}its linear layers are: {', '.join(suffixes)}", f"adapter.target_modules[{i}]")
        shapes += [facts.linears[h] for h in hits]
    smallest = min(min(s) for s in shapes)
    if cfg.adapter.r > smallest:
        raise ConfigError(f"got {cfg.adapter.r}, larger than the smallest targeted layer ({smallest} features); a "
                          f"LoRA rank above it adds parameters and no capacity: use at most {smallest} (8-64 is "
                          "usual)", "adapter.r")
    if facts.max_positions and cfg.data.block_size > facts.max_positions:
        raise ConfigError(f"got {cfg.data.block_size}; this model has {facts.max_positions} positions, so blocks "
                          f"can be at most that long: set data.block_size <= {facts.max_positions}", "data.block_size")
    need, culprit = estimate_memory(cfg, facts, shapes)
    have = machine_memory()
    if have and need > MEMORY_MARGIN * have:
        raise ConfigError(f"this run needs roughly {need / 2**30:.0f} GiB ({_explain(culprit)}), "
                          f"{need / have:.0f}x the {have / 2**30:.0f} GiB this machine has; lower {culprit}",
                          culprit)


def _explain(key: str) -> str:
    return {"adapter.r": "mostly the adapter's rank", "model.name": "mostly the base model's weights"}.get(
        key, "mostly activations: trainer.batch_size x data.block_size")


def estimate_memory(cfg: RunConfig, facts: ModelFacts, shapes: list[list[int]]) -> tuple[float, str]:
    """Rough bytes of one training step (weights, adapter with optimizer state, activations kept for backward)
    and the key that contributes most."""
    dtype = _DTYPE_BYTES.get(cfg.model.dtype, 4)
    weights = facts.parameters * dtype
    adapter = sum(cfg.adapter.r * (i + o) for i, o in shapes) * 4 * 4  # weights, gradients, two Adam moments
    tokens = cfg.trainer.batch_size * cfg.data.block_size
    # per token and layer: ~16 hidden-sized tensors kept for backward, plus the logits (and their gradient)
    activations = tokens * (facts.layers * facts.hidden * 16 + facts.vocab * 3) * 4
    parts = {"model.name": weights, "adapter.r": adapter, "trainer.batch_size": activations}
    return float(sum(parts.values())), max(parts, key=parts.get)


def machine_memory() -> int | None:
    """Bytes of the accelerator in use (the first CUDA device), else of the machine's RAM; None if unknown."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # no torch / a broken driver: fall back to RAM
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _text_bytes(corpus: Any, split: str) -> tuple[int, int]:
    docs = corpus.documents(split)
    return sum(len(d.encode("utf-8")) for d in docs), len(docs)


def check_data_upper_bound(cfg: RunConfig, train_corpus: Any, world_size: int = 1) -> int:
    """Refuse a training text that cannot fill one step whatever the tokenizer (a token is at least one byte,
    plus one end-of-document token each); returns its size in bytes."""
    size, docs = _text_bytes(train_corpus, "train")
    check_data_size(cfg, size + docs, world_size, exact=False)
    return size


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def check_data_size(cfg: RunConfig, tokens: int, world_size: int = 1, exact: bool = True) -> None:
    """One optimizer step reads ``trainer.batch_size`` blocks per process; say what to change when the training
    tokens cannot fill that (with the largest block size and batch size that would work)."""
    need = cfg.trainer.batch_size * world_size
    blocks = blocks_for(tokens, cfg.data.block_size)
    if blocks >= need:
        return
    what = f"{tokens} tokens" if exact else f"at most {tokens} tokens (its size in bytes)"
    fits_block = max(2, tokens // need)
    options = [f"more text (about {need * cfg.data.block_size} tokens, roughly {need * cfg.data.block_size * 4} "
               "characters of English)"]
    if fits_block < cfg.data.block_size:
        options.append(f"data.block_size={fits_block}")
    if blocks >= 1:
        options.append(f"trainer.batch_size={max(1, blocks // world_size)}")
    raise ConfigError(f"{cfg.data.train!r} gives {what} = {blocks} block(s) of data.block_size="
                      f"{cfg.data.block_size}, but one step needs trainer.batch_size={cfg.trainer.batch_size}"
                      f"{f' x {world_size} processes' if world_size > 1 else ''} = {need} blocks; use "
                      + " or ".join(options), "data.train")


def check_outliers(names: Sequence[str]) -> None:
    """Every ``conversion.outliers`` entry names a registered strategy."""
    from .conversion.outliers import get_outliers

    for i, name in enumerate(names):
        try:
            get_outliers(name)
        except ValueError as exc:
            raise ConfigError(str(exc), f"conversion.outliers[{i}]") from None


def preflight(cfg: RunConfig, *, structure: bool = True, world_size: int = 1) -> Preflight:
    """Run every check that needs no model load (see the module docstring); raises ConfigError."""
    from .models import ModelLoadError, resolve_source
    from .trainers.data import open_corpora
    from .trainers.loop import build_learners

    result = Preflight()
    build_learners(cfg)
    check_outliers(cfg.conversion.outliers)
    try:
        resolve_source(cfg.model.name)
    except ModelLoadError as exc:
        raise ConfigError(str(exc), "model.name") from None
    train_c, eval_c = open_corpora(cfg.data)
    if structure:  # before the data size: an impossible block size would make its advice wrong
        try:
            result.facts = model_facts(cfg.model.name)
        except (OSError, ValueError) as exc:  # unreadable config: the model load will say more; do not guess
            result.notes.append(f"model structure not checked ({type(exc).__name__}: {exc})")
        else:
            check_structure(cfg, result.facts, world_size)
    if train_c.kind == "user":  # built-in domains hold millions of tokens
        result.train_bytes = check_data_upper_bound(cfg, train_c, world_size)
    if eval_c is train_c and train_c.kind == "user":
        described = train_c.describe()
        splits = described["splits"]
        result.notes.append(f"split: {train_c.name}: {described.get('split_rule', 'held-out split')}"
                            f"{' (documents: ' + described['sample_by'] + 's)' if described.get('sample_by') else ''}"
                            f"; {splits['train']['documents']} for training, {splits['eval']['documents']} held out")
    return result


__all__ = ["Preflight", "ModelFacts", "preflight", "model_facts", "check_structure", "check_data_size",
           "estimate_memory", "machine_memory", "MEMORY_MARGIN"]
