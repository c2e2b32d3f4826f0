"""Cache of converted models: the conversion (calibration state, no base weights) is saved under
``~/.cache/hybridtune/conversions/<key>`` the first time and re-applied from there afterwards.

The key hashes the conversion settings, the base model's fingerprint, the calibration corpus's content hash (when
the conversion calibrates) and the hybridtune version, so any change converts afresh. ``HYBRIDTUNE_CACHE`` moves
the cache; ``XDG_CACHE_HOME`` is honoured. Under several processes the main process converts first and the others
load what it saved.

Example:
    >>> from hybridtune.config import ConversionSection
    >>> len(conversion_key(ConversionSection(compensation=False), "0123abcd"))
    16
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from .._version import __version__
from ..config_schema import to_dict


def cache_root() -> Path:
    """``$HYBRIDTUNE_CACHE``, else ``$XDG_CACHE_HOME/hybridtune``, else ``~/.cache/hybridtune``."""
    if os.environ.get("HYBRIDTUNE_CACHE"):
        return Path(os.environ["HYBRIDTUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hybridtune"


def _needs_calibration(section: Any) -> bool:
    from ..convert import from_section

    return from_section(section).needs_calibration


def conversion_key(section: Any, fingerprint: str, calib_hash: str | None = None) -> str:
    """16 hex digits identifying one conversion of one base model."""
    payload = {"conversion": to_dict(section), "base": fingerprint, "calib": calib_hash, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_conversion(model: nn.Module, section: Any, tokenizer: Any = None, accelerator: Any = None,
                      cache_dir: str | Path | None = None, use_cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Convert ``model`` in place with the run config's ``conversion`` section, through the cache.

    Returns the spiking model and ``{"cache_dir", "hit", "key"}`` (``hit``: loaded rather than converted here).
    """
    from ..convert import convert_from_config, load_spiking, save_spiking
    from ..models import model_fingerprint

    calib_hash = None
    if _needs_calibration(section):
        from ..data import corpus

        calib_hash = corpus(section.calib_data).content_hash("train")
    key = conversion_key(section, model_fingerprint(model), calib_hash)
    where = Path(cache_dir) if cache_dir is not None else cache_root() / "conversions" / key
    if not use_cache:
        return convert_from_config(model, section, tokenizer=tokenizer), {"cache_dir": None, "hit": False, "key": key}
    first = accelerator.main_process_first() if accelerator is not None else nullcontext()
    with first:  # the main process converts and saves; the others then find the cache
        if (where / "spiking.json").is_file():
            return load_spiking(model, where), {"cache_dir": str(where), "hit": True, "key": key}
        snn = convert_from_config(model, section, tokenizer=tokenizer)
        if accelerator is None or accelerator.is_main_process:
            where.parent.mkdir(parents=True, exist_ok=True)
            save_spiking(snn, where)
    return snn, {"cache_dir": str(where), "hit": False, "key": key}


__all__ = ["cache_root", "conversion_key", "cached_conversion"]
