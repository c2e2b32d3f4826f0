"""Continual learning across the three built-in domains: how much each strategy x learner forgets.

For both domain orders (python-docs -> python-code -> unicode-names and the reverse) and several seeds: the
``surrogate`` learner on spiking LoRA with every strategy (shared adapter, shared + replay, shared + EWC, per-task
adapters); ``stdp`` / ``rstdp`` on ``lora_A`` beside surrogate on the rest (when their modules exist) with a shared
adapter; and ``lora`` -- plain peft LoRA on the unconverted ANN trained by backprop, the non-spiking yardstick -- with
the shared and replay strategies. Each run trains the embedded default model through the sequence with
:class:`hybridtune.continual.trainer.ContinualTrainer` and records the perplexity matrix. Rows carry ``strategy``, ``learner``, ``order``, and mean / std over seeds of ``avg_final_ppl``,
``bwt``, ``forgetting`` and ``fwt`` (definitions in ``hybridtune/trainers/continual_metrics.py``; positive BWT and
forgetting = forgetting, negative FWT = helpful transfer). ``findings`` answers: does a shared spiking adapter with
replay, or with a plastic learner, forget less than a shared surrogate adapter without them?

Token budgets are small so the grid fits two CPU cores: ``--quick`` (2 seeds, 2 steps of 4 x 64 tokens per domain,
128 held-out tokens per domain) and the default (3 seeds, 3 steps, 192 tokens); one run of three stages costs about
45 s (quick) / 65-110 s on two cores shared with other jobs and one torch thread: the default grid of 48 runs took
64 minutes there, ``--quick`` (32 runs) about 25; ``--seeds`` / ``--orders`` / ``--strategies`` / ``--learners``
cut it down. The
baseline row (before training) is measured once per model kind and domain -- adapters start with ``B = 0``, so it
is the same for every strategy, learner and seed -- except for learners that need a nonzero ``B`` at initialisation.

Usage: python benchmarks/continual.py [--quick] [--seeds 3] [--steps 3] [--out benchmarks/results/continual.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

DOMAINS = ("python-docs", "python-code", "unicode-names")
ORDERS = {"forward": list(DOMAINS), "reverse": list(reversed(DOMAINS))}
STRATEGIES = ("shared", "replay", "ewc", "per_task")
YARDSTICK_STRATEGIES = ("shared", "replay")  # plain LoRA: enough to place the spiking rows, half the cost
METRICS = ("avg_final_ppl", "bwt", "forgetting", "fwt")


PLASTIC = {"stdp": "hybridtune.learners.plasticity.stdp_learner:STDPLearner", "rstdp": "hybridtune.learners.plasticity.rstdp_learner:RSTDPLearner"}
PLASTIC_STRATEGIES = ("shared",)  # the question is about a shared adapter; per-task needs no plasticity


def learner_mixes(available: list[str]) -> dict[str, dict[str, Any]]:
    """learner label -> how to build it: the learner specs, whether the model is spiking, the adapter's B init.

    ``stdp`` / ``rstdp`` are used by name when registered, else through their ``module:Class`` reference when the
    module is importable (the registry resolves both the same way), else left out.
    """
    import importlib

    mixes: dict[str, dict[str, Any]] = {
        "surrogate": {"specs": [("surrogate", "all")], "spiking": True, "init_b_std": 0.0},
        "lora": {"specs": [("surrogate", "all")], "spiking": False, "init_b_std": 0.0},
    }
    for name, ref in PLASTIC.items():
        if name not in available:
            module, _, attr = ref.partition(":")
            try:
                getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                continue
            name_or_ref = ref
        else:
            name_or_ref = name
        # a local rule on the bottleneck factor A, backprop on the rest (docs/architecture.md); B starts nonzero so the
        # rule sees adapter spikes that matter
        mixes[name] = {"specs": [(name_or_ref, "lora_A"), ("surrogate", "rest")], "spiking": True,
                       "init_b_std": 0.01}
    return mixes


def runs_with(learner: str, strategy: str) -> bool:
    if learner == "lora":
        return strategy in YARDSTICK_STRATEGIES
    if learner in PLASTIC:
        return strategy in PLASTIC_STRATEGIES
    return True


def strategy_section(name: str, domains: list[str], replay_share: float, ewc_strength: float):
    """The ``continual`` section of one strategy (the benchmark builds its strategies from it, as the CLI does)."""
    from hybridtune.continual.config import ContinualSection, RegularizerSection, ReplaySection

    return ContinualSection(
        domains=domains, adapter="per_task" if name == "per_task" else "shared", stage_eval=False, heatmap=False,
        replay=ReplaySection(share=replay_share if name == "replay" else 0.0, buffer_blocks=32),
        regularizer=RegularizerSection(name="ewc" if name == "ewc" else "none", strength=ewc_strength,
                                       fisher_blocks=4))


def make_model(mix: dict[str, Any], base: torch.nn.Module, snn: torch.nn.Module, seed: int, rank: int):
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    torch.manual_seed(seed)
    if mix["spiking"]:
        from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config

        cfg = spiking_lora_config(r=rank, alpha=2 * rank, target_modules=targets, neuron="mt", threshold=0.05,
                                  init_b_std=mix["init_b_std"])
        return get_spiking_peft_model(copy.deepcopy(snn), cfg)
    from peft import LoraConfig, get_peft_model

    return get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))


def learner_factory(mix: dict[str, Any], lr: float):
    from hybridtune.learners import learner

    def build():
        return [learner(name, params=params, lr=lr) if name == "surrogate" else learner(name, params=params)
                for name, params in mix["specs"]]  # local rules keep their own default rate

    return build


def summarize_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (strategy, learner, order) and pooled over both orders."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        for order in (r["order"], "both"):
            groups.setdefault((r["strategy"], r["learner"], order), []).append(r)
    rows = []
    for (strategy, learner, order), rs in sorted(groups.items()):
        row: dict[str, Any] = {"strategy": strategy, "learner": learner, "order": order, "runs": len(rs)}
        for m in METRICS:
            values = [r["metrics"][m] for r in rs if r["metrics"].get(m) is not None]
            row[m] = statistics.fmean(values) if values else None
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Forgetting of each variant against the shared surrogate adapter without replay, per order and pooled.

    ``less``: lower mean forgetting; ``clearly``: lower by more than the two seed spreads added. Judged per order
    (``less_in_every_order`` / ``clearly_in_every_order``) because pooling the two orders mixes their different
    levels of forgetting into the spread.
    """
    table = {(r["strategy"], r["learner"], r["order"]): r for r in rows}
    orders = sorted({r["order"] for r in rows if r["order"] != "both"})
    out: dict[str, Any] = {"reference": "shared adapter, surrogate learner, no replay"}
    if ("shared", "surrogate", "both") not in table:
        return out
    for strategy, learner in [("replay", "surrogate"), ("ewc", "surrogate"), ("shared", "stdp"),
                              ("shared", "rstdp"), ("shared", "lora"), ("replay", "lora"), ("per_task", "surrogate")]:
        if (strategy, learner, "both") not in table:
            continue
        entry: dict[str, Any] = {}
        for order in [*orders, "both"]:
            row, ref = table.get((strategy, learner, order)), table.get(("shared", "surrogate", order))
            if row is None or ref is None:
                continue
            diff = row["forgetting"] - ref["forgetting"]
            entry[order] = {"forgetting": row["forgetting"], "forgetting_std": row["forgetting_std"],
                            "reference": ref["forgetting"], "reference_std": ref["forgetting_std"],
                            "difference": diff, "avg_final_ppl": row["avg_final_ppl"],
                            "reference_avg_final_ppl": ref["avg_final_ppl"], "less": diff < 0,
                            "clearly": diff < -(row["forgetting_std"] + ref["forgetting_std"])}
        entry["less_in_every_order"] = all(entry[o]["less"] for o in orders if o in entry)
        entry["clearly_in_every_order"] = all(entry[o]["clearly"] for o in orders if o in entry)
        out[f"{strategy}/{learner}"] = entry
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(row, m):
        v = row[m]
        return "n/a" if v is None else f"{v:.3f} ± {row[m + '_std']:.3f}"

    lines = ["| strategy | learner | order | runs | avg final ppl | BWT | forgetting | FWT |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['learner']} | {r['order']} | {r['runs']} | " +
                     " | ".join(cell(r, m) for m in METRICS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 steps per domain, 128 held-out tokens")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per domain (default 3; --quick: 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens per domain (192; quick 128)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--replay-share", type=float, default=0.5)
    parser.add_argument("--ewc-strength", type=float, default=1.0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--orders", default=",".join(ORDERS), help="comma list of: " + ", ".join(ORDERS))
    parser.add_argument("--learners", default=None, help="comma list (default: all available)")
    parser.add_argument("--measure-baselines", action="store_true",
                        help="measure every run's baseline row instead of reusing the per-model one")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 was ~10x faster than 2 on a busy 2-core machine)")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/continual.json (--quick: continual_quick.json)")
    parser.add_argument("--work", default=None, help="where run directories go (default: a temporary directory)")
    parser.add_argument("--resummarize", metavar="JSON", default=None,
                        help="recompute rows and findings of an existing results file from its runs, then exit")
    args = parser.parse_args()
    if args.resummarize:
        saved = json.loads(Path(args.resummarize).read_text())
        saved["rows"] = summarize_rows(saved["runs"])
        saved["findings"] = findings(saved["rows"])
        Path(args.resummarize).write_text(json.dumps(saved, indent=2) + "\n")
        print(markdown(saved["rows"]))
        print(json.dumps(saved["findings"], indent=2))
        return
    seeds = args.seeds or (2 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 3)
    eval_tokens = args.eval_tokens or (128 if args.quick else 192)
    torch.set_num_threads(args.threads)
    out_path = Path(args.out or Path(__file__).parent / "results" /
                    ("continual_quick.json" if args.quick else "continual.json"))

    from hybridtune import __version__
    from hybridtune.config import ConversionSection, DataSection, RunConfig
    from hybridtune.continual.data import build_domains
    from hybridtune.continual.trainer import ContinualTrainer
    from hybridtune.learners import available_learners
    from hybridtune.models import load_model, load_tokenizer
    from hybridtune.trainers.cache import cached_conversion
    from hybridtune.trainers.evaluation import evaluate_perplexity
    from hybridtune.trainers.loop import make_accelerator

    started = time.perf_counter()
    mixes = learner_mixes(available_learners())
    if args.learners:
        wanted = args.learners.split(",")
        unknown = [w for w in wanted if w not in mixes]
        if unknown:
            sys.exit(f"learners {unknown} are not available; available here: {sorted(mixes)}")
        mixes = {k: v for k, v in mixes.items() if k in wanted}
    strategies = args.strategies.split(",")
    tokenizer, base = load_tokenizer("default"), load_model("default")
    base_copy = copy.deepcopy(base)  # conversion works in place; the plain-LoRA yardstick needs the ANN
    snn, cache = cached_conversion(base, ConversionSection(), tokenizer)
    data = DataSection(block_size=args.block_size, eval_tokens=eval_tokens,
                       max_train_tokens=max(8 * args.batch_size * args.block_size, 4096))
    domains = {d.name: d for d in build_domains(list(DOMAINS), data, tokenizer)}
    cfg = RunConfig()
    t = cfg.trainer
    t.steps, t.batch_size, t.scheduler, t.save_every, t.keep_last, t.eval_every = steps, args.batch_size, \
        "constant", steps, 1, steps
    cfg.tracking.backend = "none"
    acc = make_accelerator(cfg)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hybridtune-continual-bench-"))
    baselines: dict[tuple[bool, str], float] = {}
    for spiking, model in ((True, snn), (False, base_copy)):
        if not any(m["spiking"] == spiking for m in mixes.values()):
            continue
        for name, d in domains.items():
            baselines[(spiking, name)] = evaluate_perplexity(model, d.held, args.batch_size)["ppl"]
    print("baselines:", {f"{'snn' if k[0] else 'ann'}/{k[1]}": round(v, 3) for k, v in baselines.items()}, flush=True)

    records = []
    grid = [(o, s, lname, seed) for o in args.orders.split(",") for s in strategies for lname in mixes
            for seed in range(seeds) if runs_with(lname, s)]
    for i, (order, strategy, lname, seed) in enumerate(grid):
        mix = mixes[lname]
        names = ORDERS[order]
        t.seed, t.output_dir = seed, str(work / f"{order}-{strategy}-{lname}-{seed}")
        run_start = time.perf_counter()
        model = make_model(mix, base_copy, snn, seed, args.rank)
        shared = mix["init_b_std"] == 0 and not args.measure_baselines
        known = [baselines[(mix["spiking"], n)] for n in names] if shared else None
        section = strategy_section(strategy, names, args.replay_share, args.ewc_strength)
        trainer = ContinualTrainer(model, cfg, [domains[n] for n in names], section=section, accelerator=acc,
                                   learners=learner_factory(mix, args.lr), baseline=known)
        report = trainer.fit()
        acc.free_memory()
        del trainer, model
        seconds = time.perf_counter() - run_start
        records.append({"order": order, "domains": names, "strategy": strategy, "learner": lname, "seed": seed,
                        "baseline": report["baseline"], "matrix": report["matrix"],
                        "metrics": {m: report["metrics"][m] for m in METRICS}, "seconds": round(seconds, 1)})
        shutil.rmtree(t.output_dir, ignore_errors=True)
        m = records[-1]["metrics"]
        print(f"[{i + 1}/{len(grid)}] {order} {strategy} {lname} seed {seed}: avg final ppl "
              f"{m['avg_final_ppl']:.3f}, bwt {m['bwt']:+.3f}, forgetting {m['forgetting']:+.3f} ({seconds:.0f} s)",
              flush=True)
    rows = summarize_rows(records)
    out = {
        "model": "default (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32); spiking = converted with the "
                 "default ConversionSection, T = 1",
        "adapter": {"r": args.rank, "alpha": 2 * args.rank, "target_modules": ["q_proj", "v_proj", "up_proj",
                                                                                "down_proj"], "neuron": "mt"},
        "budget": {"steps_per_domain": steps, "batch_size": args.batch_size, "block_size": args.block_size,
                   "train_tokens_per_domain": steps * args.batch_size * args.block_size,
                   "eval_tokens_per_domain": eval_tokens, "lr": args.lr, "scheduler": "constant",
                   "replay_share": args.replay_share, "replay_buffer_blocks": 32, "ewc_strength": args.ewc_strength,
                   "seeds": seeds, "quick": args.quick},
        "data": {n: {"train_hash": d.info.get("train_hash"), "eval_hash": d.info.get("eval_hash")}
                 for n, d in domains.items()},
        "orders": ORDERS, "learners": {k: {"specs": v["specs"], "init_b_std": v["init_b_std"],
                                           "spiking": v["spiking"]} for k, v in mixes.items()},
        "baselines": {f"{'spiking' if k[0] else 'ann'}/{k[1]}": v for k, v in baselines.items()},
        "conversion_cache_hit": cache["hit"],
        "definitions": "P[i][j] = held-out ppl on domain j after stage i; b[j] before training. avg_final_ppl = "
                       "mean_j P[T-1][j]; bwt = mean_{j<T-1} P[T-1][j] - P[j][j] (positive = forgetting); "
                       "forgetting = mean_{j<T-1} P[T-1][j] - min_{j<=i<=T-2} P[i][j]; fwt = mean_{j>=1} "
                       "P[j-1][j] - b[j] (negative = helpful). std = sample std over seeds.",
        "hybridtune": __version__, "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "command": " ".join(["python benchmarks/continual.py", *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows, "findings": findings(rows), "runs": records,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(rows))
    print(json.dumps(out["findings"], indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
