"""The final report of a run: ``report.json`` (strict JSON: non-finite numbers become null) and ``curves.png``.

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

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(run_dir: str | Path, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 title: str = "") -> list[Path]:
    """Write ``report.json`` (atomically) and ``curves.png`` into ``run_dir``; returns both paths."""
    run_dir = Path(run_dir)
    out = run_dir / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_strict(dict(summary)), indent=2, allow_nan=False, default=str))
    tmp.replace(out)
    return [out, plot_curves(rows, run_dir / CURVES_FILE, title)]


def load_report(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / REPORT_FILE).read_text())


__all__ = ["REPORT_FILE", "CURVES_FILE", "write_report", "load_report", "plot_curves", "series"]
