"""Save / load a converted model as calibration state: ``calibration.safetensors`` + ``spiking.json``.

The directory holds no base weights: ``load_spiking(base_model, dir)`` re-applies the conversion onto a fresh base
model after checking that its weights have the fingerprint recorded at conversion time. A directory is written
to a temporary sibling and renamed into place, so a crash never leaves a half-written one.

Example:
    >>> import tempfile, torch
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> snn = convert(tiny_model("llama"), ConversionConfig(compensation=False))
    >>> d = tempfile.mkdtemp()
    >>> _ = save_spiking(snn, d + "/snn")
    >>> again = load_spiking(tiny_model("llama"), d + "/snn")
    >>> torch.equal(again(**tiny_batch()).logits, snn(**tiny_batch()).logits)
    True
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from hybridtune._version import __version__
from hybridtune.conversion.api import conversion_info, convert, is_converted
from hybridtune.conversion.config import ConversionConfig
from hybridtune.conversion.recipe import CalibrationState
from hybridtune.files import FileError, fsync_dir, fsync_tree, load_safetensors, read_json

# what to do about a damaged saved conversion (a FileError names the file)
REMEDY = "convert again (hybridtune convert ... --out DIR --overwrite), or use --no-cache for a cached one"

FORMAT = "hybridtune-spiking"
FORMAT_VERSION = 1
JSON_NAME = "spiking.json"
TENSORS_NAME = "calibration.safetensors"
_SEP = "::"


def save_spiking(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the calibration state of a converted ``model`` to ``directory`` (atomically); returns the path.

    An existing directory is replaced only if it is empty or itself a saved spiking model.
    """
    from safetensors.torch import save_file

    info = conversion_info(model)
    target = Path(directory)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / JSON_NAME).exists())):
        raise FileExistsError(f"refusing to overwrite {target}: it exists and is not a saved spiking model")
    tensors = {f"{site}{_SEP}{kind}": t.detach().to("cpu").contiguous().clone()
               for site, entry in info.state.items() for kind, t in entry.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hybridtune_version": __version__,
        "family": info.family,
        "base_fingerprint": info.base_fingerprint,
        "base_model": info.base_model,
        "config": info.config.to_dict(),
        "calibration": info.calibration,
        "plan": info.plan.summary(),
        "tensors": sorted(tensors),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(tensors, str(tmp / TENSORS_NAME), metadata={"format": FORMAT})
        (tmp / JSON_NAME).write_text(json.dumps(meta, indent=2))
        fsync_tree(tmp)  # durable before it takes the target's name
        _swap_into_place(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous save back
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_spiking(directory: str | os.PathLike) -> tuple[dict, CalibrationState]:
    """``(metadata, calibration state)`` of a saved spiking model, with clear errors for a wrong directory (a
    :class:`~hybridtune.files.FileError`, a ValueError, naming the file and the remedy for a damaged one)."""
    path = Path(directory)
    meta_path = path / JSON_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved spiking model: {JSON_NAME} is missing (write one with "
                                "hybridtune convert ... --out DIR or hybridtune.conversion.save_spiking)")
    meta = read_json(meta_path, REMEDY)
    if not isinstance(meta, dict):
        raise FileError(meta_path, "cannot read it: not a JSON object", REMEDY)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta['format_version']} is newer than this hybridtune "
                         f"({__version__}) reads ({FORMAT_VERSION}); upgrade hybridtune")
    state: CalibrationState = {}
    tensors = load_safetensors(path / TENSORS_NAME, REMEDY) if (path / TENSORS_NAME).is_file() else {}
    missing = sorted(set(meta.get("tensors", [])) - set(tensors))
    if missing:
        raise ValueError(f"{path / TENSORS_NAME} lacks tensors listed in {JSON_NAME}: {missing[:5]}")
    for key, value in tensors.items():
        site, _, kind = key.rpartition(_SEP)
        state.setdefault(site, {})[kind] = value
    return meta, state


def load_spiking(base_model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Re-apply a saved conversion onto ``base_model`` (in place) and return it.

    Refused with a ValueError when ``base_model`` is already converted, is of another family, or its weights do
    not have the fingerprint recorded at conversion time.
    """
    from hybridtune.models import model_fingerprint

    meta, state = read_spiking(directory)
    if is_converted(base_model):
        raise ValueError("load_spiking needs a fresh base model; this one is already converted")
    family = str(getattr(base_model.config, "model_type", ""))
    if family != meta["family"]:
        raise ValueError(f"{directory} was converted from a {meta['family']!r} model; the base model you passed is "
                         f"{family!r}")
    fingerprint = model_fingerprint(base_model)
    if fingerprint != meta["base_fingerprint"]:
        raise ValueError(
            f"refusing to load {directory}: it was calibrated on base weights with fingerprint "
            f"{meta['base_fingerprint']} ({meta.get('base_model') or 'unknown source'}), but the model you passed "
            f"has fingerprint {fingerprint}. Load the same base model it was converted from.")
    config = ConversionConfig.from_dict(meta["config"])
    device = next(base_model.parameters()).device
    state = {site: {k: t.to(device) for k, t in entry.items()} for site, entry in state.items()}
    model = convert(base_model, config, state=state)
    conversion_info(model).calibration = dict(meta.get("calibration", {}), loaded_from=str(directory))
    return model
