"""``hybridtune eval``: perplexity of a model on a corpus, printed and written as JSON.

``--spiking DIR`` evaluates a converted spiking model (calibration state saved by ``hybridtune convert``) and adds
the spike / energy accounting; ``--adapter DIR`` puts a saved spiking LoRA adapter on top.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="'default', a hub id, a local dir or a .gguf file")
    parser.add_argument("--data", default="python-docs", help="a built-in domain or a path (txt, jsonl, parquet)")
    parser.add_argument("--split", default="eval", choices=("train", "eval"))
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--text-field", default="text", help="the text field of a jsonl / parquet corpus")
    parser.add_argument("--spiking", default=None, metavar="DIR", help="converted spiking model (calibration state)")
    parser.add_argument("--adapter", default=None, metavar="DIR", help="spiking LoRA adapter saved by hybridtune")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")


def _fail(message: str) -> int:
    print(f"hybridtune eval: {message}", file=sys.stderr)
    return 2


def evaluate(args: argparse.Namespace) -> dict:
    """Load, pack, evaluate; returns the result dict that is printed and written."""
    from .. import __version__
    from ..data import available_corpora, corpus, pack
    from ..models import load_model, load_tokenizer
    from ..perplexity import perplexity
    from .doctor import collect

    data = corpus(args.data) if args.data in available_corpora() else corpus(args.data, text_field=args.text_field)
    tokenizer = load_tokenizer(args.model)
    blocks = pack(tokenizer, data.documents(args.split), args.block_size, max_tokens=args.max_tokens)
    model = load_model(args.model)
    result: dict = {"model": args.model, "data": data.name, "split": args.split,
                    "content_hash": data.content_hash(args.split), "corpus": data.describe(),
                    "block_size": args.block_size}
    context = None
    if args.spiking:
        from ..convert import load_spiking

        model = load_spiking(model, args.spiking)
        result["spiking"] = str(args.spiking)
    if args.adapter:
        if not args.spiking:
            raise ValueError("--adapter needs --spiking DIR: spiking LoRA adapters sit on a converted spiking model")
        from ..adapters import load, sequence_context

        model = load(model, args.adapter).eval()
        peft_model = model

        def context(batch):  # stateful adapters reset at document starts
            return sequence_context(peft_model, doc_start=batch.get("doc_start"))
        result["adapter"] = str(args.adapter)
    tensors = blocks.as_dict(("input_ids", "attention_mask", "labels", "doc_start"))
    start = time.perf_counter()
    result.update(perplexity(model, tensors, batch_size=args.batch_size, batch_context=context))
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.spiking:
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
    line = f"{result['model']} on {result['data']} ({result['split']}): perplexity {result['ppl']:.4f} " \
           f"over {result['tokens']} tokens  [content {result['content_hash'][:12]}]"
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
