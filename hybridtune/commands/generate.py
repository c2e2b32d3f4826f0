"""``hybridtune generate``: stream text from a spiking model (and adapter), then print its spike / energy line.

The work is :func:`hybridtune.generation.generate_text`; this module parses, loads and prints. Errors in the input
(missing directories, an empty prompt, beam search with stateful adapters, ...) exit 2 naming the culprit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  hybridtune generate --spiking runs/qs/spiking --adapter runs/qs/adapter "The with statement"
  hybridtune generate --spiking DIR --chat --do-sample --temperature 0.7 --seed 0 "Explain decorators"
  hybridtune generate --spiking DIR --file prompt.txt --max-new-tokens 200 --json out.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("prompt", nargs="?", default=None, help="the prompt (or --file)")
    parser.add_argument("--file", default=None, metavar="FILE", help="read the prompt from this text file")
    parser.add_argument("--spiking", default=None, metavar="DIR",
                        help="converted spiking model (hybridtune convert --out DIR); without it the ANN generates")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="spiking LoRA adapter saved by hybridtune")
    parser.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="a training run directory: its base, conversion and adapter (needs hybridtune.runs)")
    parser.add_argument("--model", default=None,
                        help="the base: 'default', a hub id, a local dir or a .gguf (default: the one --spiking "
                             "was converted from)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search (refused for stateful lif adapters: their membranes do not follow beams)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template (one user turn)")
    parser.add_argument("--no-stream", action="store_true", help="print the text only when it is complete")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the result (text, ids, settings, accounting) as JSON to FILE ('-' or no value: "
                             "stdout, and the text is not streamed)")


def _fail(message: str) -> int:
    print(f"hybridtune generate: {message}", file=sys.stderr)
    return 2


def _read_prompt(args: argparse.Namespace) -> str:
    if args.file and args.prompt:
        raise ValueError("give the prompt either as an argument or with --file, not both")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise FileNotFoundError(f"--file {path}: no such file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"--file {path}: not UTF-8 text ({exc.reason})") from None
    if not args.prompt:
        raise ValueError("no prompt: pass the text as an argument or --file FILE")
    return args.prompt


def _check_dirs(args: argparse.Namespace) -> None:
    for flag in ("spiking", "adapter", "run"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_dir():
            raise FileNotFoundError(f"--{flag} {value}: no such directory")


def _load(args: argparse.Namespace):
    from ..generation import load_for_generation

    if args.run is None:
        return load_for_generation(args.spiking, args.adapter, args.model)
    if args.spiking or args.adapter:
        raise ValueError("--run RUN_DIR already names the conversion and the adapter; drop --spiking / --adapter")
    try:
        from .. import runs  # base + adapter of a training run directory
    except ImportError:
        runs = None
    load_run = getattr(runs, "load_run", None)
    if load_run is None:
        raise ValueError("--run needs hybridtune.runs.load_run, which this version does not have; pass "
                         "--spiking DIR --adapter DIR instead")
    return load_run(args.run)


def run(args: argparse.Namespace) -> int:
    from ..adapters import SpikingAdapterLoadError
    from ..generation import GenerationError, GenerationSettings, generate_text, summary_line
    from ..models import ModelLoadError

    to_stdout = args.json == "-"
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, repetition_penalty=args.repetition_penalty,
        seed=args.seed)
    try:
        settings.validate()
        prompt = _read_prompt(args)
        _check_dirs(args)
        loaded = _load(args)
        model, tokenizer = loaded[0], loaded[1]
    except (GenerationError, ModelLoadError, SpikingAdapterLoadError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))

    stream = not (args.no_stream or to_stdout)

    def on_text(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        result = generate_text(model, tokenizer, prompt, settings, chat=args.chat,
                               on_text=on_text if stream else None)
    except GenerationError as exc:
        return _fail(str(exc))
    if to_stdout:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    if not stream:
        print(result.text, end="")
    print()
    print(summary_line(result), file=sys.stderr)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
        tmp.replace(out)
        print(f"wrote {out}", file=sys.stderr)
    return 0
