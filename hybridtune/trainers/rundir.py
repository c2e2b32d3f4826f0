"""The output directory of a run: never clobbered unless asked, found again on resume, config saved beside it.

Rules, checked before any expensive work:

- every run directory holds a marker, ``.hybridtune-run``, written when the run starts: it is how the project
  recognises a directory it created itself.
- ``trainer.resume=true``: continue from the newest checkpoint of ``trainer.output_dir`` that verifies (a damaged
  newer one is skipped with a warning). The directory must hold a run (exit 2 otherwise: a mistyped ``--out``
  must not silently start afresh); a run killed before its first checkpoint starts again from step 0. Settings that
  define the trajectory (:data:`TRAJECTORY_KEYS`) must match the saved ``config.yaml``; the error lists every key
  that differs. ``trainer.steps`` may grow (that extends the run).
- the directory exists and is not empty: refuse (exit 2, naming ``trainer.output_dir``) unless
  ``trainer.overwrite=true`` *and* it is a run directory (it holds the marker); anything else is never deleted.
- a directory that cannot be created or written fails here, with a message naming it (exit 2).

Example:
    >>> import tempfile
    >>> from hybridtune.config import RunConfig
    >>> cfg = RunConfig(); cfg.trainer.output_dir = tempfile.mkdtemp() + "/run"
    >>> run = open_run_dir(cfg)
    >>> (run.path.is_dir(), run.checkpoint)
    (True, None)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import RecoverySection, RunConfig, read_yaml, save_config
from ..config_schema import ConfigError, to_dict
from ..files import FileError, atomic_write_json, read_json, writing
from .checkpoint import list_checkpoints, newest_verified_checkpoint

CONFIG_FILE = "config.yaml"
BASE_FILE = "base.json"  # how the run's base was converted: what `eval --run` (hybridtune.runs.load_run) rebuilds
RUN_MARKER = ".hybridtune-run"  # written first into every run directory: what overwrite may delete
RUN_FORMAT = "hybridtune-run"
# Changing any of these between the interrupted run and the resumed one would change the trajectory.
TRAJECTORY_KEYS = ("model", "conversion", "adapter", "learners", "data", "trainer.seed", "trainer.batch_size",
                   "trainer.grad_accum", "trainer.scheduler", "trainer.warmup_steps", "trainer.weight_decay",
                   "trainer.max_grad_norm", "trainer.mixed_precision", "recovery.stage1_steps", "recovery.stage1_lr",
                   "recovery.stage1_batch_size")


@dataclass
class RunDir:
    path: Path
    checkpoint: Path | None = None  # the checkpoint to resume from, if any


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _diff_keys(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff_keys(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [prefix]


def check_resumable(saved: dict, cfg: RunConfig, source: str) -> None:
    """ConfigError naming every trajectory-defining key whose value differs from the saved run's."""
    now = to_dict(cfg)
    saved = {"recovery": to_dict(RecoverySection()), **saved}  # a run saved before the recovery section existed
    differ = []
    for key in TRAJECTORY_KEYS:
        differ += _diff_keys(_get(saved, key), _get(now, key), key)
    if differ:
        shown = ", ".join(f"{k} (saved {_get(saved, k)!r}, now {_get(now, k)!r})" for k in differ)
        raise ConfigError(f"cannot resume: {len(differ)} setting(s) that change the trajectory differ from the run "
                          f"being resumed: {shown}; resume with the same settings, or start a new run (another "
                          f"trainer.output_dir)", differ[0], source)


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` carries the marker this project writes into every run directory it creates."""
    marker = Path(path) / RUN_MARKER
    if not marker.is_file():
        return False
    try:
        return read_json(marker, "").get("format") == RUN_FORMAT
    except (FileError, AttributeError):
        return False


def holds_run(path: str | Path) -> bool:
    """A directory with something to resume: the marker, a saved config, or checkpoints (older runs lack a marker)."""
    p = Path(path)
    return p.is_dir() and (is_run_dir(p) or (p / CONFIG_FILE).is_file() or bool(list_checkpoints(p)))


def _remove_run_dir(path: Path) -> None:
    """Move the run directory aside (atomic), then delete it: a kill mid-delete never leaves half a run in place."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.deleting-", dir=path.parent))
    os.rmdir(aside)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _check_output_dir(cfg: RunConfig, path: Path) -> bool:
    """Apply the rules on every rank (no side effects); returns whether the directory must be removed first."""
    t = cfg.trainer
    if t.resume:
        if not holds_run(path):
            what = "does not exist" if not path.exists() else "holds no run (no config.yaml, no checkpoints)"
            raise ConfigError(f"cannot resume: {path} {what}; check --out / trainer.output_dir, or drop --resume "
                              f"(trainer.resume=false) to start a new run there", "trainer.output_dir")
        saved_cfg = path / CONFIG_FILE
        if saved_cfg.is_file():
            saved = read_yaml(saved_cfg)
            if not saved:  # an empty file says nothing: comparing it would list every key
                raise FileError(saved_cfg, "the saved config is empty (a write cut short?), so the settings cannot "
                                "be compared", "restore it from the run's config file, or delete it to resume "
                                "without the comparison")
            check_resumable(saved, cfg, str(saved_cfg))
        return False
    occupied = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if occupied and not t.overwrite:
        raise ConfigError(f"{path} already exists and is not empty; pass --resume (trainer.resume=true) to "
                          f"continue that run, trainer.overwrite=true to replace it, or choose another "
                          f"trainer.output_dir", "trainer.output_dir")
    if occupied and not is_run_dir(path):
        raise ConfigError(f"refusing to overwrite {path}: it is not a run directory hybridtune created (no "
                          f"{RUN_MARKER} marker), so trainer.overwrite=true does not apply and nothing was removed; "
                          f"choose another trainer.output_dir, or delete it yourself", "trainer.output_dir")
    return occupied


def open_run_dir(cfg: RunConfig, accelerator: Any = None, say: Any = None) -> RunDir:
    """Apply the rules above; the main process creates / deletes, every rank gets the same answer.

    ``say``: where to report a damaged checkpoint that resume skips (default: a warning).
    """
    path = Path(cfg.trainer.output_dir).expanduser()
    is_main = accelerator is None or accelerator.is_main_process
    remove = _check_output_dir(cfg, path)
    checkpoint = newest_verified_checkpoint(path, say) if cfg.trainer.resume else None
    if cfg.trainer.resume and checkpoint is None and list_checkpoints(path):
        raise FileError(path / "checkpoints", "no checkpoint of this run verifies (all are damaged)",
                        "start the run again with trainer.overwrite=true, or restore the checkpoints from a copy")
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank has looked at the directory before anyone changes it
    if is_main:
        with writing(path, "choose a writable trainer.output_dir (--out)"):
            if remove:
                _remove_run_dir(path)
            path.mkdir(parents=True, exist_ok=True)
            if not is_run_dir(path):
                atomic_write_json(path / RUN_MARKER, {"format": RUN_FORMAT, "hybridtune_version": __version__})
            save_config(cfg, path / CONFIG_FILE)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return RunDir(path=path, checkpoint=checkpoint)


__all__ = ["RunDir", "open_run_dir", "write_base_record", "BASE_FILE", "check_resumable", "is_run_dir", "holds_run", "CONFIG_FILE", "RUN_MARKER",
           "TRAJECTORY_KEYS"]


def write_base_record(run_dir: str | Path, cfg: RunConfig, cache: dict[str, Any], fingerprint: str) -> Path:
    """Record how the run's base was converted (model, conversion settings, cache entry, base fingerprint, data), so
    that :func:`hybridtune.runs.load_run` rebuilds "converted base + adapter" with no manual ``convert``."""
    record = {"model": cfg.model.name, "dtype": cfg.model.dtype, "attention": cfg.model.attention,
              "conversion": to_dict(cfg.conversion),
              "conversion_key": cache.get("key"), "conversion_cache": cache.get("cache_dir"),
              "base_fingerprint": fingerprint, "data": to_dict(cfg.data)}
    return atomic_write_json(Path(run_dir) / BASE_FILE, record, allow_nan=True)
