"""``hybridtune validate FILE [overrides...]``: every check that needs no model load, no work done (exit 2 if
invalid). ``train`` / ``quickstart`` / ``continual`` run the same checks before they start (:mod:`hybridtune.preflight`).
"""

from __future__ import annotations

import argparse

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key.sub=value or --key.sub=value")
    parser.add_argument("--print", dest="show", action="store_true", help="print the resolved config")


def run(args: argparse.Namespace) -> int:
    from hybridtune.continual.strategies import build_strategies
    from hybridtune.continual.trainer import check_strategies

    from ..config import load_config, to_dict
    from ..config_schema import ConfigError
    from ..preflight import preflight

    cfg = load_config(args.config, list(args.overrides))  # the RunConfig train and continual read, continual included
    try:
        checked = preflight(cfg)
        # what `hybridtune continual` checks too (the default continual section always passes)
        check_strategies(build_strategies(cfg.continual, cfg.trainer.seed), cfg.trainer.batch_size)
    except ConfigError as exc:
        raise exc.with_source(exc.source or args.config) from None
    if args.show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    for note in checked.notes:
        print(note)
    print(f"{args.config}: valid")
    return 0
