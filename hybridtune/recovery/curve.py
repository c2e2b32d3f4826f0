"""The recovery curve: perplexity ratio to the ANN against training tokens seen, as JSON and (optionally) a PNG.

A point is ``{"stage", "step", "tokens", "ppl", "ratio"}`` plus optional extras (the attention-transfer MSE);
stage 0 is the converted model before recovery, stage 1 attention transfer, stage 2 adapter training. ``tokens``
counts both stages (stage 2's start at stage 1's total).

Example:
    >>> curve_point(1, 10, 2048, 30.0, 20.0)["ratio"]
    1.5
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybridtune.files import atomic_write_json


def curve_point(stage: int, step: int, tokens: int, ppl: float, ppl_ann: float, **extra: float) -> dict[str, Any]:
    """One point of the curve (``ratio = ppl / ppl_ann``)."""
    return {"stage": int(stage), "step": int(step), "tokens": int(tokens), "ppl": float(ppl),
            "ratio": float(ppl) / float(ppl_ann), **extra}


def write_curve(path: str | Path, points: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None,
                png: bool = True) -> dict[str, Any]:
    """Write ``{meta..., "points": [...]}`` to ``path`` (atomically) and, when matplotlib is installed, the plot
    beside it (same name, ``.png``); returns what was written, with ``png`` (the picture's path or why there is
    none)."""
    path = Path(path)
    data: dict[str, Any] = {**(meta or {}), "points": list(points)}
    picture = path.with_suffix(".png")
    if png:
        try:
            _plot(points, picture)
            data["png"] = str(picture)
        except ImportError:
            data["png"] = "not written: matplotlib is not installed (pip install matplotlib)"
    atomic_write_json(path, data, allow_nan=True)
    return data


def _plot(points: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for stage, label in ((0, "before"), (1, "stage 1: attention transfer"), (2, "stage 2: adapters")):
        xs = [p["tokens"] for p in points if p["stage"] == stage]
        ys = [p["ratio"] for p in points if p["stage"] == stage]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens seen (both stages)")
    ax.set_ylabel("perplexity / ANN perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["curve_point", "write_curve"]
