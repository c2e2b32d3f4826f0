"""``hybridtune sweep FILE``: run a W&B sweep online, or ``--local`` with no server; ``--summary DIR`` rebuilds.

Examples::

    hybridtune sweep configs/sweeps/adapter_grid.yaml --local                 # grid, fully offline
    hybridtune sweep configs/sweeps/lr_random.yaml --local --count 8 --seed 1 # random, fully offline
    hybridtune sweep configs/sweeps/lr_random.yaml --count 20 --project P     # online: W&B server + agent
    hybridtune sweep FILE --local --launcher torchrun --num-processes 2       # each trial on 2 processes
    hybridtune sweep FILE --check                                             # validate only
    hybridtune sweep --summary runs/sweeps/adapter_grid-20250101-120000       # table, best.yaml, PNG again

Exit codes: 0 when at least one trial finished with a metric, 1 when none did, 2 for an invalid sweep file or when
an online sweep cannot start (the message says how to run it with --local), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="W&B sweep YAML (see configs/sweeps/)")
    parser.add_argument("--local", action="store_true",
                        help="no server: expand the file here (grid / random) and record trials with W&B offline")
    parser.add_argument("--count", type=int, default=None, help="number of trials (random: required with --local)")
    parser.add_argument("--project", default=None, help="W&B project (default: the file's `project`)")
    parser.add_argument("--entity", default=None, help="W&B entity (online)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="sweep output directory (default runs/sweeps/<file>-<time>)")
    parser.add_argument("--launcher", default="none", choices=("none", "accelerate", "torchrun"),
                        help="run each trial under accelerate launch or torchrun")
    parser.add_argument("--num-processes", type=int, default=1, help="processes per trial with --launcher")
    parser.add_argument("--cpu", action="store_true", default=None,
                        help="launch trials on CPU (default: CPU when torch sees no GPU)")
    parser.add_argument("--method", default=None, choices=("grid", "random", "bayes"),
                        help="override the file's method (e.g. --method random to run a bayes file locally)")
    parser.add_argument("--seed", type=int, default=0, help="seed of local random search")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="stop any trial after S seconds")
    parser.add_argument("--quiet", action="store_true", help="do not copy trial output to the console")
    parser.add_argument("--check", action="store_true", help="validate the sweep file and list the trials, no runs")
    parser.add_argument("--summary", default=None, metavar="DIR", help="rebuild the summary of a sweep directory")


def _check(args: argparse.Namespace) -> int:
    from hybridtune.sweeps import validate_sweep
    from hybridtune.sweeps.runner import SweepOptions, plan_trials

    spec = validate_sweep(args.file)
    print(f"{args.file}: valid ({spec.method}; metric {spec.metric}, {spec.goal}; "
          f"base config {spec.base_config or '(defaults)'})")
    method = args.method or spec.method
    if method != "bayes" and (method == "grid" or args.count or spec.run_cap):
        _, trials = plan_trials(spec, SweepOptions(count=args.count, method=args.method, seed=args.seed))
        from hybridtune.sweeps.params import check_parameters

        check_parameters(spec, trials, seed=args.seed)
        print(f"{len(trials)} trials with --local:")
        for i, t in enumerate(trials):
            print(f"  {i:3d}  " + " ".join(f"--{k}={v}" for k, v in t.items()))
    return 0


def run(args: argparse.Namespace) -> int:
    from hybridtune.sweeps.runner import SweepUnavailable

    if args.summary:
        from hybridtune.sweeps import summarize

        summary = summarize(args.summary)
        return 0 if summary["best"] is not None else 1
    if not args.file:
        print("hybridtune sweep: give a sweep FILE, or --summary DIR", file=sys.stderr)
        return 2
    if args.check:
        return _check(args)
    from hybridtune.sweeps import run_sweep

    options = dict(count=args.count, project=args.project, entity=args.entity, out=args.out, launcher=args.launcher,
                   num_processes=args.num_processes, cpu=args.cpu, method=args.method, seed=args.seed,
                   timeout=args.timeout, quiet=args.quiet)
    try:
        summary = run_sweep(args.file, local=args.local, **options)
    except SweepUnavailable as exc:
        print(f"hybridtune sweep: {exc}", file=sys.stderr)
        return 2
    if summary.get("interrupted"):
        print(f"hybridtune sweep: interrupted; the summary so far is in {summary['out']}", file=sys.stderr)
        return 130
    return 0 if summary["best"] is not None else 1
