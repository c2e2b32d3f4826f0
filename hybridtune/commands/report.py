"""``hybridtune report DIR``: fidelity, spikes, synaptic operations and energy of a converted model or a run.

For a saved spiking model the report is computed once (perplexity against the ANN plus the accounting) and written
to ``DIR/report`` as JSON and PNGs; a directory that already holds ``report.json`` is read and printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a saved spiking model (hybridtune convert --out) or a run directory")
    parser.add_argument("--model", default="default", help="the base model the spiking state was made from")
    parser.add_argument("--data", default="python-docs")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="where to write the report (default DIR/report)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..convert import spiking_report, summary_line

    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"hybridtune report: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        report = spiking_report(directory, model=args.model, data=args.data, max_tokens=args.max_tokens,
                                block_size=args.block_size, out=args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hybridtune report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else summary_line(report))
    return 0
