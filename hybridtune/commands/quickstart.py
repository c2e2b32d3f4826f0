"""``hybridtune quickstart [overrides...] [--out DIR]``: the main job on the embedded default, in minutes on a CPU.

Converts SmolLM2-135M (embedded GGUF) into a frozen spiking model at T = 1 (cached under ``~/.cache/hybridtune``
after the first time), attaches spiking LoRA, trains it with the surrogate learner on the built-in ``python-docs``
domain, and prints held-out perplexity before / after training next to the ANN's, spikes per neuron and the
energy estimate, plus where the W&B offline files are. The run is ``hybridtune/config/quickstart.yaml``, shipped
with the package; ``configs/quickstart.yaml`` is the same file (``hybridtune train configs/quickstart.yaml`` repeats
it); overrides work as for ``train``.
"""

from __future__ import annotations

import argparse

from .train import accept_overrides, format_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: runs/quickstart-<date>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the quick start in --out")
    parser.add_argument("--no-cache", action="store_true", help="convert afresh instead of using the cache")
    accept_overrides(parser)


def quickstart_config(overrides: list[str] = (), out: str | None = None):
    """The quick start's RunConfig (the YAML shipped in the package) with ``overrides`` applied (``out``: the output
    directory, default ``runs/quickstart-<time>``)."""
    from ..config import load_quickstart

    default_out = "runs/quickstart-{time}"  # expanded by check_run, the same on every process
    return load_quickstart([f"trainer.output_dir={out or default_out}", *overrides])


def run(args: argparse.Namespace) -> int:
    from ..trainers.domain import run_domain_adaptation
    from ..trainers.loop import process_state
    from .progress import StepTimeEstimate
    from .train import check_run, cli_overrides

    overrides = [o for o in cli_overrides(args) if not o.startswith("trainer.output_dir=")]
    if args.resume and not args.out:
        print("hybridtune quickstart: --resume needs --out DIR (the run to continue)")
        return 2
    main = process_state().is_main_process
    say = print if main else (lambda _m: None)
    cfg = quickstart_config(overrides, args.out)
    say(f"hybridtune quick start: {cfg.model.name} -> spiking (T=1) + spiking LoRA r={cfg.adapter.r}, "
        f"{cfg.trainer.steps} steps on {cfg.data.train}")
    cfg = check_run(cfg, say=say, command="quickstart")
    report = run_domain_adaptation(cfg, echo=print, use_cache=not args.no_cache, callbacks=[StepTimeEstimate()])
    if main:
        print(format_summary(report))
    return 0
