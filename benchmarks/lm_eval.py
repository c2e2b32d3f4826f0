"""The default model as ANN, converted (spiking, no adapter) and adapted (spiking + the quick start's adapter) on a
small local lm-evaluation-harness task, run through lm-eval's own command line.

The tasks live in ``benchmarks/lm_eval_tasks/`` (YAML + JSONL, held-out python-docs text; no download):

* ``hybridtune_pydocs_cloze`` (multiple_choice, 48 items): the first 12 words of a sentence from the eval split of
  the built-in ``python-docs`` corpus, and 4 continuations of 6 words -- the true one and three from other
  sentences. Metrics: acc, acc_norm.
* ``hybridtune_pydocs_docs`` (loglikelihood_rolling): the 6 eval documents, first 2,000 characters each. Metrics:
  word_perplexity, byte_perplexity, bits_per_byte.

Each model runs ``python -m hybridtune.integrations.lm_eval --model hybridtune --model_args ... --tasks ...
--include_path benchmarks/lm_eval_tasks`` from the repository root (the data paths in the YAML are relative to it);
spiking runs also write the accounting of every forward (``accounting=FILE``). ``--make-data`` rebuilds the JSONL
files from the corpus (deterministic).

Usage: python benchmarks/lm_eval.py --spiking DIR --adapter DIR [--model default] [--limit N]
Writes benchmarks/results/lm_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "benchmarks" / "lm_eval_tasks"
TASK_NAMES = ("hybridtune_pydocs_cloze", "hybridtune_pydocs_docs")


def make_data(items: int = 48, seed: int = 0) -> dict:
    """Write the two JSONL files from the eval split of python-docs; returns the corpus facts."""
    from hybridtune.data import corpus

    data = corpus("python-docs")
    docs = list(data.documents("eval"))
    sentences = []
    for doc in docs:
        for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            words = s.split()
            if len(words) >= 18 and all(w.isascii() for w in words):
                sentences.append(words)
    rng = random.Random(seed)
    rng.shuffle(sentences)
    chosen = sentences[:items]
    tails = [" " + " ".join(w[12:18]) for w in chosen]
    rows = []
    for i, words in enumerate(chosen):
        others = rng.sample([t for j, t in enumerate(tails) if j != i], 3)
        choices = [tails[i], *others]
        rng.shuffle(choices)
        rows.append({"context": " ".join(words[:12]), "choices": choices, "label": choices.index(tails[i])})
    TASKS.mkdir(parents=True, exist_ok=True)
    (TASKS / "pydocs_cloze.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (TASKS / "pydocs_docs.jsonl").write_text("\n".join(json.dumps({"text": d[:2000]}) for d in docs) + "\n")
    return {"corpus": "python-docs", "split": "eval", "content_hash": data.content_hash("eval"),
            "cloze_items": len(rows), "documents": len(docs)}


def run_lm_eval(model_args: str, out_dir: Path, limit: int | None) -> tuple[dict, float]:
    """One lm-eval command-line run; returns (its results JSON, seconds)."""
    cmd = [sys.executable, "-m", "hybridtune.integrations.lm_eval", "--model", "hybridtune", "--model_args",
           model_args, "--tasks", ",".join(TASK_NAMES), "--include_path", str(TASKS), "--output_path", str(out_dir),
           "--batch_size", "1"]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    seconds = time.perf_counter() - start
    files = sorted(out_dir.rglob("results_*.json"))
    return json.loads(files[-1].read_text()), seconds


def scores(results: dict) -> dict:
    out = {}
    for task in TASK_NAMES:
        row = results["results"][task]
        out[task] = {k.split(",")[0]: round(v, 4) for k, v in row.items()
                     if isinstance(v, float) and "stderr" not in k}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--spiking", required=True, help="converted default model (e.g. the quick start's cache)")
    parser.add_argument("--adapter", required=True, help="spiking LoRA adapter (e.g. the quick start's)")
    parser.add_argument("--limit", type=int, default=None, help="lm-eval --limit (items per task)")
    parser.add_argument("--make-data", action="store_true", help="rebuild the task JSONL files first")
    parser.add_argument("--variants", nargs="+", default=["ann", "converted", "adapted"],
                        choices=["ann", "converted", "adapted"],
                        help="which models to run (rows of an existing --out file for the others are kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_eval.json"))
    args = parser.parse_args()
    facts = make_data() if args.make_data else json.loads((TASKS / "source.json").read_text())
    (TASKS / "source.json").write_text(json.dumps(facts, indent=2) + "\n")
    variants = {
        "ann": f"model={args.model}",
        "converted": f"model={args.model},spiking={args.spiking}",
        "adapted": f"model={args.model},spiking={args.spiking},adapter={args.adapter}",
    }
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    rows = {k: v for k, v in previous.get("rows", {}).items() if k not in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_args in variants.items():
            if name not in args.variants:
                continue
            acc_file = Path(tmp) / f"{name}_accounting.json"
            if name != "ann":
                model_args += f",accounting={acc_file}"
            results, seconds = run_lm_eval(model_args, Path(tmp) / name, args.limit)
            row = {"model_args": model_args.replace(str(acc_file), "<accounting file>"), "scores": scores(results),
                   "seconds": round(seconds, 1)}
            if acc_file.is_file():
                total = json.loads(acc_file.read_text())["total"]
                row["accounting"] = {"tokens": json.loads(acc_file.read_text())["tokens"],
                                     "spikes_per_neuron": total["spikes_per_neuron"], "sops": total["sops"],
                                     "energy_ratio_fp32_45nm": total["energy"]["fp32_45nm"]["ratio"],
                                     "energy_ratio_int8": total["energy"]["int8"]["ratio"]}
            rows[name] = row
            print(name, json.dumps(row), flush=True)
    from hybridtune import __version__

    out = {"what": "lm-evaluation-harness on local held-out python-docs tasks: ANN vs converted vs adapted",
           "tasks": list(TASK_NAMES), "task_data": facts, "limit": args.limit,
           "rows": {k: rows[k] for k in ("ann", "converted", "adapted") if k in rows},
           "lm_eval": _version("lm_eval"), "hybridtune": __version__, "machine": platform.platform(),
           "commands": {**previous.get("commands", {}),
                        **{v: " ".join(["python", "benchmarks/lm_eval.py", *sys.argv[1:]]) for v in args.variants}},
           "note": "timings were taken on a shared machine and are not comparable; the scores are exact"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", args.out)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name.replace("_", "-"))


if __name__ == "__main__":
    main()
