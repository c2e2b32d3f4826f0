"""A training run's directory as something to use: the base it was converted from, recorded at training time, and
:func:`load_run`, which rebuilds "converted base + trained adapter" from it with no manual ``convert``.

``hybridtune train`` writes ``base.json`` into the run directory (model name and dtype, the ``conversion``
section, the conversion-cache key and directory, the base weights' fingerprint). :func:`load_run` checks the base
weights' fingerprint, re-applies the recorded conversion (from the cache when its entry is there, else converting
again with the same settings and calibration data), then loads ``adapter/`` on top.
``hybridtune eval --run RUN_DIR`` (or ``--adapter RUN_DIR/adapter``) and ``hybridtune report RUN_DIR`` use it.

Example:
    >>> model, tokenizer, info = load_run("runs/own-text-20260101-120000")          # doctest: +SKIP
    >>> ids = tokenizer("def add(a, b):", return_tensors="pt").input_ids             # doctest: +SKIP
    >>> print(tokenizer.decode(model.generate(input_ids=ids, max_new_tokens=20)[0]))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .trainers.rundir import BASE_FILE

ADAPTER_DIR = "adapter"


class RunLoadError(ValueError):
    """A directory that is not a usable run; the message names the file and what would work."""


def find_run_dir(path: str | Path) -> Path:
    """The run directory for ``path``: the run directory itself or its ``adapter/`` subdirectory."""
    p = Path(path).expanduser()
    if p.name == ADAPTER_DIR and (p.parent / BASE_FILE).is_file():
        return p.parent
    if not p.is_dir():
        raise RunLoadError(f"{p} is not a directory; give the directory `hybridtune train` wrote (its --out)")
    if not (p / BASE_FILE).is_file():
        raise RunLoadError(f"{p} has no {BASE_FILE}: it is not a finished run directory of this hybridtune version "
                           "(train writes it before training starts); for an adapter alone, give its converted "
                           "base with --spiking DIR")
    return p


def read_base_record(run_dir: str | Path) -> dict[str, Any]:
    path = find_run_dir(run_dir) / BASE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunLoadError(f"cannot read {path}: {exc}; the run directory is damaged (train again, or give "
                           "--spiking DIR --adapter DIR to eval)") from None


def load_run(run_dir: str | Path, *, use_cache: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, info)`` of a run directory: the converted base with the trained adapter, in eval mode.

    ``run_dir`` is what ``hybridtune train`` wrote (or its ``adapter/`` subdirectory). ``info`` holds the run
    directory, the adapter directory, the model name, the conversion settings and key, the run's ``data``
    section, and whether the conversion came from the cache. Raises :class:`RunLoadError` for a directory that is
    not a finished run. This signature is stable (``hybridtune eval --run`` and other commands call it).
    """

    from .adapters import load as load_adapter
    from .config import ConversionSection, ModelSection
    from .config_schema import build
    from .conversion import load_spiking
    from .conversion.state import JSON_NAME
    from .models import load_base, load_tokenizer, model_fingerprint
    from .trainers.cache import cached_conversion
    from .trainers.recovery import SPIKING_DIR

    root = find_run_dir(run_dir)
    record = read_base_record(root)
    adapter_dir = root / ADAPTER_DIR
    if not (adapter_dir / "adapter_config.json").is_file() and not any(adapter_dir.glob("*/adapter_config.json")):
        raise RunLoadError(f"{root} has no trained adapter in {adapter_dir} (the run did not finish); continue it "
                           f"with `hybridtune train CONFIG --resume --out {root}`")
    tokenizer = load_tokenizer(record["model"])
    # runs recorded before the attention field: the model's default
    base = load_base(ModelSection(record["model"], record.get("dtype", "float32"), record.get("attention")))
    section = build(ConversionSection, record["conversion"], "conversion")
    found = model_fingerprint(base)
    if record.get("base_fingerprint") and found != record["base_fingerprint"]:
        raise RunLoadError(f"the base model {record['model']!r} found now (weights fingerprint {found}) is not the one "
                           f"{root} was trained on ({record['base_fingerprint']}); install the model files it was "
                           "trained with, or train again")
    # the recorded settings, re-applied (from the cache when its entry is there; the cache key may also change with
    # the hybridtune version, which does not change the conversion itself)
    recovered = root / SPIKING_DIR
    if (recovered / JSON_NAME).is_file():  # a recovery run trained the conversion too: its own state, not the cache
        snn, cache = load_spiking(base, recovered), {"key": None, "hit": False}
    else:
        snn, cache = cached_conversion(base, section, tokenizer, use_cache=use_cache)
    model = load_adapter(snn, adapter_dir).eval()
    info = {"run_dir": str(root), "adapter_dir": str(adapter_dir), "model": record["model"],
            "conversion": record["conversion"], "conversion_key": cache["key"], "conversion_from_cache": cache["hit"],
            "data": record.get("data", {})}
    return model, tokenizer, info


__all__ = ["load_run", "read_base_record", "find_run_dir", "RunLoadError", "BASE_FILE",
           "ADAPTER_DIR"]
