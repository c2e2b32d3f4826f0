"""Tracking: W&B (online / offline / disabled), TensorBoard, or none — always plus ``metrics.jsonl``.

Example:
    >>> import tempfile
    >>> t = make_tracker(tempfile.mkdtemp(), backend="none")
    >>> t.log({"train/loss": 1.0}, step=1); t.finish()
    >>> t.location is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import JsonlTracker, MultiTracker, NullTracker, Tracker, flatten, read_metrics, scalar

BACKENDS = ("wandb", "tensorboard", "none")
METRICS_FILE = "metrics.jsonl"


def make_tracker(run_dir: str | Path, *, backend: str = "none", mode: str = "offline", project: str = "hybridtune",
                 run_name: str | None = None, tags: Sequence[str] = (), config: Mapping[str, Any] | None = None,
                 resume_step: int | None = None, run_id: str | None = None) -> MultiTracker:
    """The main process's tracker: ``metrics.jsonl`` in ``run_dir`` plus the chosen backend.

    ``resume_step`` truncates ``metrics.jsonl`` to what a resumed checkpoint had seen; ``run_id`` re-attaches W&B.
    """
    run_dir = Path(run_dir)
    trackers: list[Tracker] = [JsonlTracker(run_dir / METRICS_FILE, resume_step=resume_step)]
    if backend == "wandb":
        from .wandb_backend import WandbTracker

        trackers.append(WandbTracker(run_dir, project=project, mode=mode, run_name=run_name, tags=tags,
                                     config=config, run_id=run_id))
    elif backend == "tensorboard":
        from .tensorboard_backend import TensorBoardTracker

        trackers.append(TensorBoardTracker(run_dir, config=config))
    elif backend != "none":
        raise ValueError(f"unknown tracking backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return MultiTracker(trackers)


__all__ = ["BACKENDS", "METRICS_FILE", "Tracker", "NullTracker", "JsonlTracker", "MultiTracker", "make_tracker",
           "read_metrics", "flatten", "scalar"]
