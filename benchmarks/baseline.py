"""Perplexity of the embedded default ANN on the eval split of every built-in domain.

Writes benchmarks/results/baseline.json. Usage: python benchmarks/baseline.py [--max-tokens 8192] [--block-size 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from hybridtune import __version__
from hybridtune.data import BUILTIN_CORPORA, corpus, pack
from hybridtune.models import load_model, load_tokenizer
from hybridtune.perplexity import perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "baseline.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer("default"), load_model("default")
    rows = []
    for name in BUILTIN_CORPORA:
        data = corpus(name)
        blocks = pack(tokenizer, data.documents("eval"), args.block_size, max_tokens=args.max_tokens)
        start = time.perf_counter()
        result = perplexity(model, blocks.as_dict(), batch_size=4)
        rows.append({"data": name, "content_hash": data.content_hash("eval"), "ppl": round(result["ppl"], 4),
                     "tokens": result["tokens"], "seconds": round(time.perf_counter() - start, 2)})
        print(rows[-1])
    out = {"model": "default (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32)", "split": "eval",
           "block_size": args.block_size, "max_tokens": args.max_tokens, "hybridtune": __version__,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "command": "python benchmarks/baseline.py", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
