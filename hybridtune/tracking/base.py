"""The tracker interface, the always-on JSONL metrics log, and the no-op / fan-out trackers.

Every run writes ``metrics.jsonl`` in its output directory (one ``{"step": s, ...}`` object per line): it is what
the final report and resume read back, whatever backend (W&B, TensorBoard, none) also receives the metrics.
Trackers run on the main process only; the trainer gives the other ranks a :class:`NullTracker`.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> t = JsonlTracker(d / "metrics.jsonl")
    >>> t.log({"train/loss": 2.5}, step=1); t.log({"train/loss": 2.0}, step=2); t.finish()
    >>> [r["train/loss"] for r in read_metrics(d / "metrics.jsonl")]
    [2.5, 2.0]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """Where metrics go. ``location`` says where the backend writes (a directory), or None."""

    name: str
    location: str | None

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None: ...

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None: ...

    def finish(self) -> None: ...


def scalar(value: Any) -> float | int | str | bool | None:
    """A JSON/W&B-friendly scalar from floats, ints, 0-d tensors and numpy scalars (strings pass through)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return float(value)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; leaves are passed through :func:`scalar` when they are numbers."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = scalar(value) if not isinstance(value, (list, tuple)) else value
    return out


class NullTracker:
    """Discards everything (non-main ranks, ``tracking.backend: none``)."""

    name = "none"
    location = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (empty list if it does not exist); a torn last line is ignored."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a write cut short by a kill: everything after it is unreliable
    return rows


def write_metrics(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` atomically (fsynced temporary file, then a rename)."""
    from ..files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(dict(r)) + "\n" for r in rows))


def keep_rows(path: str | Path, count: int) -> None:
    """Keep the first ``count`` rows of a ``metrics.jsonl`` (what a checkpoint had seen), atomically."""
    rows = read_metrics(path)
    if len(rows) > count:
        write_metrics(path, rows[:count])


class JsonlTracker(NullTracker):
    """Appends ``{"step": s, **metrics}`` lines to ``path``, flushed per line (a killed run loses at most one).

    ``resume_step``: keep only the rows with ``step <= resume_step`` (what the checkpoint being resumed had seen),
    so a resumed run's log equals an uninterrupted run's. None starts a fresh file. The kept rows are rewritten
    atomically (a kill during the rewrite leaves the old file whole). ``rows`` counts the lines in the file.
    """

    name = "jsonl"

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.location = str(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step is not None else []
        write_metrics(self.path, kept)
        self.rows = len(kept)
        self._fh = self.path.open("a")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": int(step), **{k: scalar(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        self.rows += 1

    # summary, images and tables: discarded (the trainer writes the final report itself)

    def finish(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class MultiTracker:
    """Sends every call to each tracker in turn."""

    name = "multi"

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    @property
    def location(self) -> str | None:
        for t in self.trackers:
            if t.name not in ("jsonl", "none") and t.location:
                return t.location
        return None

    def backend(self, name: str) -> Tracker | None:
        return next((t for t in self.trackers if t.name == name), None)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def summary(self, values: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.summary(values)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        for t in self.trackers:
            t.log_image(key, path, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        for t in self.trackers:
            t.log_table(key, columns, rows, step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


__all__ = ["Tracker", "NullTracker", "JsonlTracker", "MultiTracker", "read_metrics", "write_metrics", "keep_rows",
           "flatten", "scalar"]
