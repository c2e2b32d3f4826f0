"""Weights & Biases tracker: online, offline (files under ``<run_dir>/wandb``, upload later with ``wandb sync``), or
disabled (writes nothing).

``WANDB_MODE`` in the environment, when set, wins over the configured mode: tests and CI set
``WANDB_MODE=disabled`` (or ``offline``) and ``WANDB_SILENT=true`` and nothing waits on a server. A resumed run
re-attaches to the same W&B run id (``resume="allow"``), so its curves continue.

Example:
    >>> import tempfile, os
    >>> os.environ.setdefault("WANDB_SILENT", "true")  # doctest: +SKIP
    >>> t = WandbTracker(tempfile.mkdtemp(), mode="disabled", config={"lr": 1e-3})  # doctest: +SKIP
    >>> t.log({"train/loss": 2.0}, step=1); t.finish()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import scalar

MODES = ("online", "offline", "disabled")


def effective_mode(configured: str) -> str:
    """The mode W&B will run in: ``WANDB_MODE`` if set (``dryrun`` means offline), else ``configured``."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        env = "offline"
    mode = env if env in MODES else configured
    if mode not in MODES:
        raise ValueError(f"W&B mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


class WandbTracker:
    """A thin wrapper over one ``wandb`` run; ``location`` is the run's directory (None when disabled)."""

    name = "wandb"

    def __init__(self, run_dir: str | Path, *, project: str = "hybridtune", mode: str = "offline",
                 run_name: str | None = None, tags: Sequence[str] = (), config: Mapping[str, Any] | None = None,
                 run_id: str | None = None):
        import wandb

        self.mode = effective_mode(mode)
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=project, dir=str(run_dir), mode=self.mode, name=run_name, tags=list(tags),
                              config=dict(config or {}), id=run_id, resume="allow" if run_id else None,
                              reinit="create_new")
        self.run_id = getattr(self.run, "id", None)
        self.location = None if self.mode == "disabled" else str(Path(self.run.dir).resolve().parent)
        if self.mode != "disabled":
            # the sweep metric and the report's "best" use the minimum, not the last value
            self.run.define_metric("eval/ppl", summary="min")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log({k: scalar(v) for k, v in metrics.items()}, step=int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        if self.mode != "disabled":
            self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        if self.mode != "disabled":
            self.run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def finish(self) -> None:
        self.run.finish()


__all__ = ["WandbTracker", "effective_mode", "MODES"]
