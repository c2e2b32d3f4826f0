"""Sweeps over hybridtune run settings, tracked in W&B: online (server + agent) or fully offline (``local=True``).

A sweep file is standard W&B sweep YAML whose parameter names are dotted run-config keys and whose ``command`` runs
``hybridtune train CONFIG ${args}`` (see ``configs/sweeps/``). Every trial is a subprocess that receives the swept
values as ``--key=value`` overrides, writes into its own output directory, and is recorded in
``<out>/trials/<run id>/trial.json``; the metric is read from the trial's ``report.json`` (a key path such as
``eval/ppl``). After the sweep, ``<out>`` holds ``summary.json``, ``summary.csv``, ``best.yaml`` and ``sweep.png``.

Example (no server needed)::

    from hybridtune.sweeps import run_sweep, summarize
    summary = run_sweep("configs/sweeps/tiny_grid.yaml", local=True, out="runs/sweeps/tiny")
    summary["best"]["params"], summary["files"]["best_config"]
    summarize("runs/sweeps/tiny")          # rebuild the table, best.yaml and the PNG from the trial records
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridtune.sweeps.params import check_parameters, grid_trials, random_trials
from hybridtune.sweeps.runner import SweepOptions, SweepUnavailable, check_online, run_local, run_online
from hybridtune.sweeps.spec import SweepSpec, load_sweep, parse_sweep
from hybridtune.sweeps.summary import best_trial, collect, summarize
from hybridtune.sweeps.trial import lookup, read_metric


def validate_sweep(path: str | Path) -> SweepSpec:
    """Load a sweep file and check every parameter against the run config, without running anything.

    Example:
        >>> validate_sweep("configs/sweeps/adapter_grid.yaml").names  # doctest: +SKIP
        ['adapter.r', 'adapter.threshold']
    """
    spec = load_sweep(path)
    check_parameters(spec)
    return spec


def run_sweep(path: str | Path, *, local: bool = False, **options: Any) -> dict[str, Any]:
    """Run the sweep in ``path``; options are the fields of :class:`SweepOptions` (count, out, launcher, ...).

    Returns the summary: ``trials`` (records), ``best`` (record or None), ``files``, ``counts``, ``interrupted``,
    ``out``. Raises :class:`~hybridtune.config_schema.ConfigError` before any trial for a bad file, and
    :class:`SweepUnavailable` when an online sweep cannot reach the server.
    """
    spec = load_sweep(path)
    opts = SweepOptions(local=local, **options)
    return run_local(spec, opts) if local else run_online(spec, opts)


__all__ = ["run_sweep", "validate_sweep", "summarize", "load_sweep", "parse_sweep", "SweepSpec", "SweepOptions",
           "SweepUnavailable", "check_online", "check_parameters", "grid_trials", "random_trials", "collect",
           "best_trial", "read_metric", "lookup"]
