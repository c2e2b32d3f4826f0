"""TensorBoard tracker: scalars, the run config as text, images and tables, under ``<run_dir>/tensorboard``.

Example:
    >>> import tempfile
    >>> t = TensorBoardTracker(tempfile.mkdtemp(), config={"lr": 1e-3})
    >>> t.log({"train/loss": 2.0}, step=1); t.finish()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .base import scalar


class TensorBoardTracker:
    """Writes event files with ``torch.utils.tensorboard.SummaryWriter``; non-numeric metrics are skipped."""

    name = "tensorboard"

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.location = str(Path(run_dir).resolve() / "tensorboard")
        self.writer = SummaryWriter(log_dir=self.location)
        if config:
            text = yaml.safe_dump(dict(config), sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in metrics.items():
            value = scalar(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, int(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in values.items())
        self.writer.add_text("summary", "| key | value |\n|---|---|\n" + rows)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        import matplotlib.image

        self.writer.add_image(key, matplotlib.image.imread(str(path))[..., :3], step or 0, dataformats="HWC")

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        head = "| " + " | ".join(map(str, columns)) + " |\n|" + "---|" * len(columns)
        body = "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)
        self.writer.add_text(key, head + "\n" + body, step or 0)

    def finish(self) -> None:
        self.writer.close()


__all__ = ["TensorBoardTracker"]
