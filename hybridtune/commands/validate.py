"""``hybridtune validate FILE [overrides...]``: check a run config without doing any work (exit 2 if invalid)."""

from __future__ import annotations

import argparse

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key.sub=value or --key.sub=value")
    parser.add_argument("--print", dest="show", action="store_true", help="print the resolved config")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, read_yaml, to_dict

    overrides = list(args.overrides)
    data = read_yaml(args.config) or {}
    if "continual" in data or any(o.lstrip("-").startswith("continual.") for o in overrides):
        # a `hybridtune continual` config: its continual section is read beside the run config
        from ..trainers.continual_config import load_continual_config

        cfg, section = load_continual_config(args.config, overrides)
        resolved = {**to_dict(cfg), "continual": to_dict(section)}
    else:
        resolved = to_dict(load_config(args.config, overrides))
    if args.show:
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
    print(f"{args.config}: valid")
    return 0
