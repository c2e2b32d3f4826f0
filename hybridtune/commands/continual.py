"""``hybridtune continual CONFIG [overrides...]``: train spiking LoRA through a sequence of domains and report the
perplexity matrix, backward / forward transfer and forgetting.

The YAML is an ordinary run config plus a ``continual:`` section (``configs/continual/*.yaml``); ``trainer.steps``
counts steps per domain. Overrides are ``key.sub=value`` or ``--key.sub=value`` for every section, ``continual.*``
included (``continual.domains=[python-code,python-docs]``, ``--continual.replay.share=0.25``). ``--resume``
continues an interrupted sequence in ``trainer.output_dir`` (mid-stage from the stage's newest checkpoint); ``--out``
sets ``trainer.output_dir``. Several processes: ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m hybridtune.cli
continual CONFIG`` on CPU, ``accelerate launch --num_processes N -m hybridtune.cli continual CONFIG`` on GPUs.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import accept_overrides

    parser.add_argument("config", help="run config YAML with a continual: section (see configs/continual/)")
    parser.add_argument("--resume", action="store_true", help="continue the sequence in trainer.output_dir")
    parser.add_argument("--out", metavar="DIR", default=None, help="output directory (trainer.output_dir)")
    parser.add_argument("--no-cache", action="store_true", help="convert afresh instead of using the cache")
    parser.add_argument("--check", action="store_true", help="validate the config (and overrides) and exit")
    accept_overrides(parser)
    parser.epilog = """overrides: key.sub=value or --key.sub=value, applied in order on top of the config, e.g.
  continual.domains=[unicode-names,python-code,python-docs] --continual.replay.share=0.25
  continual.adapter=per_task trainer.steps=20 learners.0.lr=5e-4 tracking.backend=none"""


def run(args: argparse.Namespace) -> int:
    from hybridtune.continual.strategies import build_strategies
    from hybridtune.continual.trainer import check_strategies

    from ..config import load_config
    from ..config_schema import ConfigError
    from ..preflight import preflight
    from ..trainers.loop import process_state
    from .train import cli_overrides

    cfg = load_config(args.config, cli_overrides(args))  # the same RunConfig as train / validate
    section = cfg.continual
    try:  # the checks `hybridtune validate` runs, before any model is loaded
        preflight(cfg, world_size=process_state().num_processes)
        check_strategies(build_strategies(section, cfg.trainer.seed), cfg.trainer.batch_size)
    except ConfigError as exc:
        raise exc.with_source(exc.source or args.config) from None
    if args.check:
        print(f"{args.config}: valid ({len(section.domains)} domains, {section.adapter} adapter, "
              f"{cfg.trainer.steps} steps per domain)")
        return 0
    from hybridtune.continual.pipeline import format_matrix, run_continual

    report = run_continual(cfg, echo=print, use_cache=not args.no_cache)
    if process_state().is_main_process:
        print(format_matrix(report))
    return 0
