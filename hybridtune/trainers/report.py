"""The final report of a run: ``report.json`` (strict JSON: non-finite numbers become null) and ``curves.png``.

``report.json`` is written atomically and ``fsync``-ed, and never replaced by a worse one: a report covering fewer
steps, or one that lost a value the existing report has (:func:`is_worse`), is refused with a warning.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [{"step": 0, "eval/ppl": 30.0}, {"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.5,
    ...         "eval/ppl": 20.0}]
    >>> paths = write_report(d, {"steps": 2, "nan": float("nan")}, rows)
    >>> sorted(p.name for p in paths), load_report(d)["nan"]
    (['curves.png', 'report.json'], None)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import FileError, atomic_write, atomic_write_json, read_json

REPORT_FILE = "report.json"
CURVES_FILE = "curves.png"


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over ``metrics.jsonl`` rows that have it."""
    pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss and held-out perplexity against the step, one panel each (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.6))
    x, y = series(rows, "train/loss")
    ax_loss.plot(x, y, lw=1, color="tab:blue")
    ax_loss.set(xlabel="optimizer step", ylabel="training loss (nats/token)", title="training loss")
    x, y = series(rows, "eval/ppl")
    ax_ppl.plot(x, y, marker="o", color="tab:orange")
    ax_ppl.set(xlabel="optimizer step", ylabel="perplexity", title="held-out perplexity")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def is_worse(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """True when ``new`` covers fewer steps than ``old`` or lacks a top-level number / section ``old`` has."""
    if isinstance(old.get("steps"), int) and isinstance(new.get("steps"), int) and new["steps"] < old["steps"]:
        return True
    if new.get("steps") != old.get("steps"):
        return False  # a longer run: a new report whatever it holds
    return any(not _missing(v) and _missing(new.get(k)) for k, v in old.items())


def write_report(run_dir: str | Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 title: str = "") -> list[Path]:
    """Write ``report.json`` (atomically, fsynced) and ``curves.png`` into ``run_dir``; returns both paths.

    An existing report that :func:`is_worse` judges better is kept (with a warning).
    """
    run_dir = Path(run_dir)
    out = run_dir / REPORT_FILE
    new = _strict(dict(summary))
    old = read_report(run_dir)
    if old is not None and is_worse(new, old):
        warnings.warn(f"{out} kept: the new report covers fewer steps or lacks values the existing one has",
                      stacklevel=2)
    else:
        atomic_write_json(out, new, default=str)
    return [out, plot_curves(rows, run_dir / CURVES_FILE, title)]


def load_report(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / REPORT_FILE, "run the training again with --resume to rewrite it")


def read_report(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's report, or None when there is none or it is damaged (empty, torn, not an object)."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = load_report(run_dir)
    except FileError:
        return None
    return report if isinstance(report, dict) else None


__all__ = ["REPORT_FILE", "CURVES_FILE", "write_report", "load_report", "read_report", "is_worse",
           "plot_curves", "series"]
