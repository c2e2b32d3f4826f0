"""The quick start as a user runs it, recorded: ``hybridtune quickstart`` with a cold conversion cache.

Runs the command in a subprocess (a fresh cache directory, so the conversion is part of the time), reads the run's
``report.json`` and writes ``benchmarks/results/quickstart.json``: held-out perplexity before and after training
beside the ANN's (with block size and token count), spikes per neuron, energy ratios, wall time, machine, model,
data, seed and command. The README's quick-start figures come from this file. Run it on an otherwise idle machine.

Usage: python benchmarks/quickstart.py [--out benchmarks/results/quickstart.json] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import command_line, machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "quickstart.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="run-config overrides passed to hybridtune quickstart")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, cache = Path(tmp) / "run", Path(tmp) / "cache"
        cmd = ["hybridtune", "quickstart", "--out", str(run_dir), *args.overrides]
        env = {**os.environ, "HYBRIDTUNE_CACHE": str(cache), "WANDB_MODE": "offline"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
            return proc.returncode
        report = json.loads((run_dir / "report.json").read_text())
    result = {
        "benchmark": "quickstart",
        "command": command_line(),
        "ran": " ".join(cmd[:2] + cmd[4:]) + " (fresh HYBRIDTUNE_CACHE: the conversion is timed)",
        "wall_s": round(wall, 1),
        "cold_cache": True,
        "report": report,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
