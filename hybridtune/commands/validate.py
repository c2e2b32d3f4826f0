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
    from ..config import load_config, read_yaml, to_dict
    from ..config_schema import ConfigError
    from ..preflight import preflight

    overrides = list(args.overrides)
    data = read_yaml(args.config) or {}
    if "continual" in data or any(o.lstrip("-").startswith("continual.") for o in overrides):
        # a `hybridtune continual` config: its continual section is read beside the run config
        from hybridtune.continual.config import load_continual_config

        cfg, section = load_continual_config(args.config, overrides)
        resolved = {**to_dict(cfg), "continual": to_dict(section)}
    else:
        cfg = load_config(args.config, overrides)
        resolved = to_dict(cfg)
    try:
        checked = preflight(cfg)
    except ConfigError as exc:
        raise exc.with_source(exc.source or args.config) from None
    if args.show:
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
    for note in checked.notes:
        print(note)
    print(f"{args.config}: valid")
    return 0
