"""Cache of converted models: the conversion (calibration state, no base weights) is saved under
``~/.cache/hybridtune/conversions/<key>`` the first time and re-applied from there afterwards.

The key hashes the conversion settings, the base model's fingerprint, the calibration corpus's content hash (when
the conversion calibrates) and the hybridtune version, so any change converts afresh. ``HYBRIDTUNE_CACHE`` moves
the cache; ``XDG_CACHE_HOME`` is honoured. Under several processes the main process converts first and the others
load what it saved.

Example:
    >>> from hybridtune.config import ConversionConfig
    >>> len(conversion_key(ConversionConfig(compensation=False), "0123abcd"))
    16
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from .._version import __version__
from ..config_schema import to_dict
from ..files import FileError, atomic_write_json, read_json, sha256_file
from ..paths import cache_root


def _needs_calibration(section: Any) -> bool:
    from hybridtune.conversion import needs_calibration

    return needs_calibration(section)


def conversion_key(section: Any, fingerprint: str, calib_hash: str | None = None, attention: str | None = None) -> str:
    """16 hex digits identifying one conversion of one base model; ``attention``, the base's attention implementation,
    is part of it because calibration runs through it (a rounding difference moves thresholds)."""
    payload = {"conversion": to_dict(section), "base": fingerprint, "calib": calib_hash, "version": __version__,
               "attention": attention}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


MANIFEST = "cache.json"  # {"key", "files": {name: sha256}}: written last, what makes an entry complete


def verify_entry(where: Path, key: str) -> str | None:
    """None when the cache entry ``where`` is complete and intact, else what is wrong (one line)."""
    from hybridtune.conversion.state import JSON_NAME, read_spiking

    if not (where / JSON_NAME).is_file():
        return f"{where / JSON_NAME} is missing"
    try:
        if not (where / MANIFEST).is_file():  # an entry from before manifests: reading it is the check
            read_spiking(where)
            return None
        manifest = read_json(where / MANIFEST, "")
        if manifest.get("key") != key:
            return f"{where / MANIFEST} belongs to another conversion ({manifest.get('key')})"
        for name, digest in manifest.get("files", {}).items():
            if not (where / name).is_file() or sha256_file(where / name) != digest:
                return f"{where / name} is missing or differs from the hash recorded when it was cached"
    except (FileError, ValueError, AttributeError) as exc:
        return str(exc)
    return None


def _store(snn: nn.Module, where: Path, key: str) -> None:
    from hybridtune.conversion import save_spiking

    where.parent.mkdir(parents=True, exist_ok=True)
    save_spiking(snn, where)
    files = {p.name: sha256_file(p) for p in sorted(where.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(where / MANIFEST, {"key": key, "files": files})


def cached_conversion(model: nn.Module, section: Any, tokenizer: Any = None, accelerator: Any = None,
                      cache_dir: str | Path | None = None, use_cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Convert ``model`` in place with the run config's ``conversion`` section, through the cache.

    Returns the spiking model and ``{"cache_dir", "hit", "key"}`` (``hit``: loaded rather than converted here).
    An entry that does not verify (:func:`verify_entry`: torn, truncated or altered files) is deleted and rebuilt
    with a warning; a failure to write the cache is a :class:`~hybridtune.files.FileError` naming the entry.
    """
    from hybridtune.conversion import convert_from_config, load_spiking

    from ..models import model_fingerprint

    calib_hash = None
    if _needs_calibration(section):
        from ..data import corpus

        calib_hash = corpus(section.calib_data).content_hash("train")
    key = conversion_key(section, model_fingerprint(model), calib_hash,
                         getattr(getattr(model, "config", None), "_attn_implementation", None))
    where = Path(cache_dir) if cache_dir is not None else cache_root() / "conversions" / key
    if not use_cache:
        return convert_from_config(model, section, tokenizer=tokenizer), {"cache_dir": None, "hit": False, "key": key}
    first = accelerator.main_process_first() if accelerator is not None else nullcontext()
    with first:  # the main process converts and saves; the others then find the cache
        main = accelerator is None or accelerator.is_main_process
        if where.exists():
            problem = verify_entry(where, key)
            if problem is None:
                return load_spiking(model, where), {"cache_dir": str(where), "hit": True, "key": key}
            if main:
                warnings.warn(f"conversion cache entry {where} is damaged ({problem}): converting again and "
                              f"rebuilding it (--no-cache skips the cache)", stacklevel=2)
                shutil.rmtree(where, ignore_errors=True)
        snn = convert_from_config(model, section, tokenizer=tokenizer)
        if main:
            try:
                _store(snn, where, key)
            except OSError as exc:
                raise FileError(where, f"cannot write the conversion cache entry: {exc.strerror or exc}",
                                "free some space or make the cache writable (HYBRIDTUNE_CACHE moves it), or pass "
                                "--no-cache") from exc
    return snn, {"cache_dir": str(where), "hit": False, "key": key}


__all__ = ["cache_root", "conversion_key", "cached_conversion", "verify_entry", "MANIFEST"]
