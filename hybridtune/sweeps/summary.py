"""Sweep summary: the table of trials, the best configuration as a ready-to-run YAML, and a PNG.

Everything is rebuilt from the trial records (``<out>/trials/*/trial.json``) and the sweep record
(``<out>/sweep.json``), so ``hybridtune sweep --summary DIR`` works after an interruption, after an online sweep,
or on a copy of the directory. Files written into ``DIR``: ``summary.json``, ``summary.csv``, ``best.yaml`` (the
base config with the best trial's values applied, validated with :func:`hybridtune.config.load_config`) and
``sweep.png`` (the metric against each swept parameter; needs matplotlib).

Example:
    >>> best_trial([{"status": "ok", "value": 3.0}, {"status": "ok", "value": 2.0},
    ...             {"status": "failed", "value": None}], "minimize")["value"]
    2.0
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hybridtune.config_schema import ConfigError
from hybridtune.sweeps.trial import write_json

SWEEP_RECORD = "sweep.json"


def collect(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial record under ``out_dir/trials``, in trial order."""
    records = []
    for path in sorted(Path(out_dir, "trials").glob("*/trial.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("index", 0), r.get("started") or 0))


def best_trial(records: list[dict[str, Any]], goal: str) -> dict[str, Any] | None:
    """The finished trial with the best finite metric (lowest for ``minimize``), or None."""
    ok = [r for r in records if r.get("status") == "ok" and isinstance(r.get("value"), (int, float))
          and math.isfinite(r["value"])]
    if not ok:
        return None
    return (min if goal == "minimize" else max)(ok, key=lambda r: r["value"])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def table(records: list[dict[str, Any]], names: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the trial table."""
    header = ["#", "run", "status", metric, *names, "seconds"]
    rows = [[str(r.get("index", "")), str(r.get("run_id", "")), str(r.get("status", "")), _cell(r.get("value")),
             *[_cell(r.get("params", {}).get(n)) for n in names], _cell(r.get("seconds"))] for r in records]
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def read_sweep_record(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir, SWEEP_RECORD)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def write_best_config(out_dir: Path, best: dict[str, Any], base: str | None, meta: dict[str, Any]) -> Path:
    """``best.yaml``: ``base`` (or the RunConfig defaults) with the best trial's values, checked by load_config."""
    import yaml

    from hybridtune.config import load_config, to_dict
    from hybridtune.sweeps.params import format_arg

    overrides = [format_arg(k, v) for k, v in best.get("params", {}).items()]
    cfg = load_config(base, overrides)
    data = to_dict(cfg)
    path = out_dir / "best.yaml"
    header = (f"# best trial {best.get('run_id')} of sweep {meta.get('sweep_id', '?')}: "
              f"{best.get('metric')} = {best.get('value'):.6g} ({meta.get('goal', 'minimize')})\n"
              f"# base config: {base or '(defaults)'}; swept values: {' '.join(overrides)}\n"
              f"# run it: hybridtune train {path}\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    load_config(path)  # the file must load as written
    return path


def plot(records: list[dict[str, Any]], names: list[str], metric: str, goal: str, path: Path) -> Path:
    """Scatter of the metric against each swept parameter (finished trials; the best one starred)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError(f"the sweep plot needs matplotlib ({exc}); install it with `pip install matplotlib` "
                           f"and rebuild with `hybridtune sweep --summary {path.parent}`") from None
    ok = [r for r in records if r.get("status") == "ok" and r.get("value") is not None]
    best = best_trial(records, goal)
    cols = min(3, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names or ["(none)"]):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs = [r.get("params", {}).get(name) for r in ok]
        ys = [r["value"] for r in ok]
        numeric = xs and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric:
            pos = xs
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
        else:
            labels = sorted({_cell(x) for x in xs})
            pos = [labels.index(_cell(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.scatter(pos, ys, s=28, alpha=0.8)
        if best is not None and best in ok:
            j = ok.index(best)
            ax.scatter([pos[j]], [ys[j]], marker="*", s=180, color="tab:red", label="best")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} ({goal}) over {len(ok)} finished of {len(records)} trials")
    fig.savefig(path, dpi=100)
    return path


def summarize(out_dir: str | Path, *, plot_png: bool = True, best_config: bool = True,
              echo: bool = True) -> dict[str, Any]:
    """Rebuild the summary of the sweep in ``out_dir``: print the table, write the files, return the summary dict.

    Example (an empty sweep directory gives an empty table)::

        summary = summarize("runs/sweeps/lr-rank")
        summary["best"]["params"]  # {'learners.0.lr': 0.001, 'adapter.r': 8}
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise ConfigError(f"not a sweep output directory: {out}", "summary")
    meta = read_sweep_record(out)
    records = collect(out)
    metric = meta.get("metric") or next((r.get("metric") for r in records if r.get("metric")), "metric")
    goal = meta.get("goal", "minimize")
    names = list(meta.get("names") or dict.fromkeys(k for r in records for k in r.get("params", {})))
    header, rows = table(records, names, metric)
    best = best_trial(records, goal)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    summary: dict[str, Any] = {"sweep_id": meta.get("sweep_id"), "mode": meta.get("mode"),
                               "method": meta.get("method"), "metric": metric, "goal": goal, "names": names,
                               "counts": counts, "trials": records, "best": best, "files": {}}
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    summary["files"]["csv"] = str(out / "summary.csv")
    notes = []
    if best is not None and best_config:
        try:
            summary["files"]["best_config"] = str(write_best_config(out, best, meta.get("base_config"), meta))
        except ConfigError as exc:
            notes.append(f"best config not written: {exc}")
    if plot_png and records:
        try:
            summary["files"]["plot"] = str(plot(records, names, metric, goal, out / "sweep.png"))
        except RuntimeError as exc:
            notes.append(str(exc))
    summary["notes"] = notes
    write_json(out / "summary.json", summary)
    summary["files"]["json"] = str(out / "summary.json")
    if echo:
        print(format_table(header, rows))
        state = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        print(f"\n{len(records)} trials ({state}); metric {metric} ({goal})")
        if best is not None:
            print(f"best: {best['run_id']}  {metric} = {best['value']:.6g}  " +
                  " ".join(f"{k}={_cell(v)}" for k, v in best.get("params", {}).items()))
        for key, value in summary["files"].items():
            print(f"  {key}: {value}")
        for note in notes:
            print(f"note: {note}")
    return summary


__all__ = ["collect", "best_trial", "table", "format_table", "summarize", "plot", "write_best_config",
           "read_sweep_record", "SWEEP_RECORD"]
