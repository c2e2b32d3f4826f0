"""The time estimate a training command prints: from the throughput measured on this machine, never a guess.

Before the first step it uses the tokens per second recorded by the last run of the same shape on this machine
(``throughput.json`` in the cache root), if any; after the first step it prints the estimate from that step's
measured time, and records it for the next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..trainers.loop import TrainerCallback


def _throughput_file() -> Path:
    from ..trainers.cache import cache_root

    return cache_root() / "throughput.json"


def shape_key(trainer: Any) -> str:
    """What the step time depends on: model, block and batch size, adapter, learners, device and processes."""
    cfg = trainer.cfg
    acc = trainer.accelerator
    learners = "+".join(s.name for s in cfg.learners)
    return (f"{cfg.model.name}|{cfg.model.dtype}|block{cfg.data.block_size}|batch{cfg.trainer.batch_size}|"
            f"r{cfg.adapter.r}|{','.join(cfg.adapter.target_modules)}|{learners}|{acc.device.type}|"
            f"x{acc.num_processes}|ckpt{cfg.trainer.gradient_checkpointing}|{cfg.trainer.sharding}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class StepTimeEstimate(TrainerCallback):
    """Prints the expected training time (main process only); see the module docstring."""

    def __init__(self, echo=print):
        self.echo = echo
        self.first_step: int | None = None

    def _say(self, trainer: Any, message: str) -> None:
        if trainer.accelerator.is_main_process:
            self.echo(message)

    def on_train_begin(self, trainer: Any) -> None:
        self.first_step = trainer.state.step
        remaining = trainer.cfg.trainer.steps - trainer.state.step
        try:
            recorded = json.loads(_throughput_file().read_text()).get(shape_key(trainer))
        except (OSError, ValueError):
            recorded = None
        if recorded and remaining > 0:
            tokens = remaining * self._tokens_per_step(trainer)
            self._say(trainer, f"estimate: about {_duration(tokens / recorded)} for {remaining} steps "
                               f"({recorded:.0f} tokens/s measured by the last run of this shape here; "
                               "evaluations not included)")

    @staticmethod
    def _tokens_per_step(trainer: Any) -> int:
        t = trainer.cfg.trainer
        return t.batch_size * t.grad_accum * trainer.accelerator.num_processes * trainer.cfg.data.block_size

    def on_step_end(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        if self.first_step is None or step != self.first_step + 1:
            return
        seconds = logs.get("train/step_s")
        if not seconds:
            return
        rate = self._tokens_per_step(trainer) / seconds
        remaining = trainer.cfg.trainer.steps - step
        self._say(trainer, f"first step: {seconds:.1f} s ({rate:.0f} tokens/s measured) -> about "
                           f"{_duration(remaining * seconds)} for the remaining {remaining} steps "
                           "(evaluations not included)")
        if trainer.accelerator.is_main_process:
            self._record(shape_key(trainer), rate)

    @staticmethod
    def _record(key: str, rate: float) -> None:
        path = _throughput_file()
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            data = {}
        data[key] = rate
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only loses the next run's early estimate


__all__ = ["StepTimeEstimate", "shape_key"]
