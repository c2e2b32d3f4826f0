"""The output directory of a run: never clobbered unless asked, found again on resume, config saved beside it.

Rules, checked before any expensive work:

- ``trainer.resume=true``: continue from the newest complete checkpoint in ``trainer.output_dir`` (start from step 0
  when there is none yet). Settings that define the trajectory (model, conversion, adapter, learners, data, seed,
  batch size, gradient accumulation) must match the saved ``config.yaml``; the error names the keys that differ.
- the directory exists and is not empty: refuse (exit 2, naming ``trainer.output_dir``) unless
  ``trainer.overwrite=true``, which deletes it first.

Example:
    >>> import tempfile
    >>> from hybridtune.config import RunConfig
    >>> cfg = RunConfig(); cfg.trainer.output_dir = tempfile.mkdtemp() + "/run"
    >>> run = open_run_dir(cfg)
    >>> (run.path.is_dir(), run.checkpoint)
    (True, None)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, read_yaml, save_config
from ..config_schema import ConfigError, to_dict
from .checkpoint import latest_checkpoint

CONFIG_FILE = "config.yaml"
# Changing any of these between the interrupted run and the resumed one would change the trajectory.
TRAJECTORY_KEYS = ("model", "conversion", "adapter", "learners", "data", "trainer.seed", "trainer.batch_size",
                   "trainer.grad_accum")


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
    differ = []
    for key in TRAJECTORY_KEYS:
        differ += _diff_keys(_get(saved, key), _get(now, key), key)
    if differ:
        shown = ", ".join(f"{k} (saved {_get(saved, k)!r}, now {_get(now, k)!r})" for k in differ[:4])
        raise ConfigError(f"cannot resume: {shown}{' ...' if len(differ) > 4 else ''} differ from the run being "
                          f"resumed; resume with the same settings, or start a new run (another trainer.output_dir)",
                          differ[0], source)


def open_run_dir(cfg: RunConfig, accelerator: Any = None) -> RunDir:
    """Apply the rules above; the main process creates / deletes, every rank gets the same answer."""
    t = cfg.trainer
    path = Path(t.output_dir).expanduser()
    is_main = accelerator is None or accelerator.is_main_process
    checkpoint = None
    if t.resume:
        saved_cfg = path / CONFIG_FILE
        if saved_cfg.is_file():
            check_resumable(read_yaml(saved_cfg), cfg, str(saved_cfg))
        checkpoint = latest_checkpoint(path)
    occupied = not t.resume and path.exists() and (not path.is_dir() or any(path.iterdir()))
    if occupied and not t.overwrite:
        raise ConfigError(f"{path} already exists and is not empty; pass --resume (trainer.resume=true) to "
                          f"continue that run, trainer.overwrite=true to replace it, or choose another "
                          f"trainer.output_dir", "trainer.output_dir")
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank has looked at the directory before anyone changes it
    if is_main:
        if occupied:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path / CONFIG_FILE)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return RunDir(path=path, checkpoint=checkpoint)


__all__ = ["RunDir", "open_run_dir", "check_resumable", "CONFIG_FILE", "TRAJECTORY_KEYS"]
