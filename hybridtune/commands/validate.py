"""``hybridtune validate FILE [overrides...]``: check a run config without doing any work (exit 2 if invalid)."""

from __future__ import annotations

import argparse

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key.sub=value or --key.sub=value")
    parser.add_argument("--print", dest="show", action="store_true", help="print the resolved config")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, to_dict

    cfg = load_config(args.config, list(args.overrides))
    if args.show:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    print(f"{args.config}: valid")
    return 0
