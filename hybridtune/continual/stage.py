"""One stage of a continual run: the domain trainer's loop (:class:`.loop.Trainer`), with replayed blocks mixed into
each micro-batch and its metrics forwarded to the continual run's tracker.

Only two pieces of the loop are replaced; everything else (accumulation, learners, the inf/NaN guard, checkpoints,
resume, evaluation, reports) is the domain trainer's own:

- :meth:`StageTrainer.micro_batch`: ``batch_size - n`` blocks of the stage's domain (the usual seeded sampler, so
  the data position is still one integer) plus ``n`` rows of the replay buffer chosen by a pure function of
  ``(seed, stage, cursor)``; with no replay plan it is the base method.
- :meth:`StageTrainer._open_tracking`: ``metrics.jsonl`` in the stage's own directory (truncated on resume, as the
  base does) plus a forwarder that sends the same rows to the continual run's W&B / TensorBoard backend at the
  global step ``step_offset + step`` with ``stage/index`` added, so the curves of all stages form one run.

Example:
    >>> from hybridtune.tracking import NullTracker
    >>> fwd = StageForward([NullTracker()], offset=40, stage=1)
    >>> fwd.log({"train/loss": 2.0}, step=3)   # sent to the targets at step 43
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hybridtune.tracking import METRICS_FILE as _METRICS
from hybridtune.tracking import JsonlTracker, MultiTracker, Tracker
from hybridtune.trainers.loop import Trainer
from hybridtune.trainers.sampler import BlockSampler, select


class StageForward:
    """Tracker that forwards a stage's rows to the continual run's backends at the global step (summary dropped:
    the continual run writes its own)."""

    name = "stage-forward"
    location = None

    def __init__(self, targets: Sequence[Tracker], offset: int, stage: int):
        self.targets, self.offset, self.stage = list(targets), int(offset), int(stage)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for t in self.targets:
            t.log({**metrics, "stage/index": self.stage}, self.offset + int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        for t in self.targets:
            t.log_image(f"stage{self.stage}/{key}", path, None if step is None else self.offset + int(step))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        for t in self.targets:
            t.log_table(f"stage{self.stage}/{key}", columns, rows, None if step is None else self.offset + int(step))

    def finish(self) -> None:
        pass  # the continual run's backends outlive the stage


def backends_of(tracker: Any) -> list[Tracker]:
    """The non-file backends (W&B, TensorBoard) of a continual run's tracker."""
    trackers = getattr(tracker, "trackers", None)
    if trackers is None:
        return [] if getattr(tracker, "name", "none") in ("none", "jsonl") else [tracker]
    return [t for t in trackers if t.name not in ("jsonl", "none")]


class StageTrainer(Trainer):
    """:class:`.loop.Trainer` for stage ``stage`` of a continual run (see the module docstring).

    Args (beyond the Trainer's):
        stage: the stage index (0-based).
        replay: a :class:`~.continual_strategies.ReplayPlan` or None.
        parent_tracker: the continual run's tracker (main process) whose backends receive this stage's rows.
        step_offset: optimizer steps taken in earlier stages (global step = offset + stage step).
    """

    def __init__(self, model: torch.nn.Module, config: Any = None, *, stage: int = 0, replay: Any = None,
                 parent_tracker: Any = None, step_offset: int = 0, **kwargs: Any):
        super().__init__(model, config, **kwargs)
        self.stage, self.replay = int(stage), replay
        self.parent_tracker, self.step_offset = parent_tracker, int(step_offset)
        if replay is not None and replay.per_batch > 0:
            acc, t = self.accelerator, self.cfg.trainer
            own = t.batch_size - replay.per_batch
            self.sampler = BlockSampler(self.train_tensors["input_ids"].shape[0], own, acc.num_processes,
                                        acc.process_index, t.seed)
            self.replay_tensors = {k: v for k, v in replay.blocks.items() if k in self.train_tensors}
            missing = set(self.train_tensors) - set(self.replay_tensors)
            if missing or self.replay_tensors["input_ids"].shape[1] != self.train_tensors["input_ids"].shape[1]:
                raise ValueError(f"replayed blocks do not match stage {stage}'s blocks (missing {sorted(missing)} or "
                                 f"another block length); all domains must be packed with the same data.block_size")

    def micro_batch(self, cursor: int) -> dict[str, torch.Tensor]:
        if self.replay is None or self.replay.per_batch == 0:
            return super().micro_batch(cursor)
        acc = self.accelerator
        own = select(self.train_tensors, self.sampler.indices(cursor))
        rows = self.replay.rows(cursor, acc.num_processes, acc.process_index)
        old = select(self.replay_tensors, rows)
        return {k: torch.cat([own[k], old[k]]).to(acc.device) for k in own}

    def replay_sources(self, cursor: int) -> torch.Tensor:
        """The domain index of every replayed block in this rank's micro-batch ``cursor`` (empty without replay)."""
        if self.replay is None or self.replay.per_batch == 0:
            return torch.empty(0, dtype=torch.long)
        acc = self.accelerator
        return self.replay.source[self.replay.rows(cursor, acc.num_processes, acc.process_index)]

    def _open_tracking(self) -> None:
        if not self.accelerator.is_main_process:
            return
        resume_step = self.state.step if self.run_dir.checkpoint is not None else None
        trackers: list[Any] = [JsonlTracker(self.run_dir.path / _METRICS, resume_step=resume_step)]
        targets = backends_of(self.parent_tracker)
        if targets:
            trackers.append(StageForward(targets, self.step_offset, self.stage))
        self.tracker = MultiTracker(trackers)


__all__ = ["StageTrainer", "StageForward", "backends_of"]
