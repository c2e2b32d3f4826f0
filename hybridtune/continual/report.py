"""The perplexity matrix of a continual run as JSON, as table rows (W&B), and as a heatmap PNG.

``matrix.json``::

    {"domains": [...], "baseline": [b_0, ...], "matrix": [[P_00, P_01, ...], ...], "metrics": {...},
     "definitions": {...}, "row_labels": ["before", "after 0: <domain>", ...]}

``baseline`` is measured before any training and is *not* row 0 of ``matrix``; ``matrix[i][j]`` is the held-out
perplexity on domain ``j`` after stage ``i`` (see :mod:`.metrics`). An unfinished run has fewer rows than
domains; its metrics are then those of the stages done so far (``complete: false``).

Example:
    >>> rec = matrix_record(["a", "b"], [20.0, 40.0], [[10.0, 30.0], [14.0, 12.0]])
    >>> rec["metrics"]["bwt"], rec["row_labels"]
    (4.0, ['before', 'after 0: a', 'after 1: b'])
    >>> table_rows(rec)[0]
    ['before', 20.0, 40.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridtune.continual.metrics import DEFINITIONS, summarize

MATRIX_FILE = "matrix.json"
HEATMAP_FILE = "heatmap.png"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def row_labels(domains: Sequence[str], stages: int) -> list[str]:
    return ["before"] + [f"after {i}: {domains[i]}" for i in range(stages)]


def matrix_record(domains: Sequence[str], baseline: Sequence[float] | None,
                  rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Everything ``matrix.json`` holds. Metrics of a partial run use the square top-left block done so far."""
    T, done = len(domains), len(rows)
    metrics: dict[str, Any] = {}
    if done:
        square = [list(r[:done]) for r in rows]
        metrics = summarize(square, list(baseline[:done]) if baseline is not None else None)
        metrics["avg_final_ppl_all_domains"] = sum(rows[-1]) / T
    return {"domains": list(domains), "baseline": list(baseline) if baseline is not None else None,
            "matrix": [list(r) for r in rows], "row_labels": row_labels(domains, done),
            "complete": done == T, "metrics": metrics, "definitions": dict(DEFINITIONS)}


def write_matrix(path: str | Path, record: Mapping[str, Any]) -> Path:
    """``record`` as strict JSON (non-finite numbers become null), written atomically."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(_finite(dict(record)), indent=2, allow_nan=False) + "\n")
    tmp.replace(out)
    return out


def table_columns(record: Mapping[str, Any]) -> list[str]:
    return ["after"] + list(record["domains"])


def table_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """Rows for a W&B table: the baseline row then one row per stage, first column the row label."""
    rows = [record["baseline"]] if record.get("baseline") is not None else []
    rows += record["matrix"]
    labels = record["row_labels"] if record.get("baseline") is not None else record["row_labels"][1:]
    return [[label, *[float(v) for v in row]] for label, row in zip(labels, rows)]


def plot_heatmap(record: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """The matrix (baseline row on top) as an annotated heatmap; the diagonal (each domain right after its own stage)
    is boxed. Cells show perplexity; colour is the change against the column's reference -- the baseline row, or
    the column's best value without one -- as ``log(P / reference)``: blue = lower (better), red = higher, so
    forgetting shows as red below the diagonal whatever the domain's perplexity scale."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = table_rows(record)
    labels = [r[0] for r in rows]
    values = [[float(v) for v in r[1:]] for r in rows]
    domains = list(record["domains"])
    has_baseline = record.get("baseline") is not None
    offset = 1 if has_baseline else 0

    def ok(v: float) -> bool:
        return math.isfinite(v) and v > 0

    refs = []
    for j in range(len(domains)):
        column = [r[j] for r in values if ok(r[j])]
        refs.append(values[0][j] if has_baseline and ok(values[0][j]) else (min(column) if column else 1.0))
    change = [[math.log(v / refs[j]) if ok(v) else float("nan") for j, v in enumerate(r)] for r in values]
    span = max([abs(c) for r in change for c in r if math.isfinite(c)] + [1e-6])
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(domains), 1.2 + 0.55 * len(rows)))
    image = ax.imshow(change, cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            strong = math.isfinite(change[i][j]) and abs(change[i][j]) > 0.6 * span
            ax.text(j, i, f"{v:.2f}" if math.isfinite(v) else "inf", ha="center", va="center", fontsize=8,
                    color="white" if strong else "black")
    for j in range(min(len(domains), len(values) - offset)):
        ax.add_patch(Rectangle((j - 0.5, j + offset - 0.5), 1, 1, fill=False, lw=2, ec="black"))
    ax.set_xticks(range(len(domains)), domains, rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("evaluated on")
    reference = "before" if has_baseline else "column best"
    fig.colorbar(image, ax=ax, label=f"log(ppl / {reference})")
    ax.set_title(title or "held-out perplexity after each stage (lower is better)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["MATRIX_FILE", "HEATMAP_FILE", "row_labels", "matrix_record", "write_matrix", "table_columns",
           "table_rows", "plot_heatmap"]
