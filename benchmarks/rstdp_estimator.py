"""What a node-perturbation estimate is worth: rstdp's gradient cosine against the number of perturbed units and pairs.

``rstdp``'s antithetic estimator (:mod:`hybridtune.learners.plasticity.perturbation`) is unbiased, but each token's
estimate carries the noise of every perturbed unit. This script measures, on the converted default model with freshly
initialised adapters (the learners benchmark's adapters: r = 8 on v / o / gate / up / down, LIF bottleneck), the
cosine between the rule's estimate and the true gradient (:func:`hybridtune.learners.alignment.gradient_alignment`,
``estimate=True``; no clipping, one batch of 4 x 128 python-docs tokens per estimate, mean over ``--batches``
held-out batches) for

* ``nodes``: ``bottleneck`` (noise on the bottleneck current, ``r`` units per layer and token; judged on ``lora_A``)
  or ``output`` (noise on the adapter's output, the layer's width; judged on ``lora_B``);
* ``blocks``: the adapters of the top 2 blocks, or of all of them (more perturbed units per token);
* ``pairs``: antithetic pairs per estimate (``2 · pairs`` extra forwards);
* ``sigma``: the noise scale (bottleneck: 1 θ; output: each of ``--sigma-output``, on the top 2 blocks; the
  all-blocks output rows use the first). Downstream of an adapter the converted model quantizes every linear input,
  so a perturbation too small to cross a quantization step changes little but the rounding.

Writes ``benchmarks/results/rstdp_estimator.json``: one row per setting with ``units_per_token`` (perturbed units per
token), ``forwards`` (per estimate, the trainer's own forward included), ``cosine`` (the judged group) and
``cosine_all`` (every parameter the learner updates), plus machine, model, data, seed and command.

Usage: python benchmarks/rstdp_estimator.py [--pairs 1 4 16] [--batches 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from hybridtune import __version__

RESULT = Path(__file__).parent / "results" / "rstdp_estimator.json"
TARGETS = ["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GROUP = {"bottleneck": "lora_A", "output": "lora_B"}
SIGMA_BOTTLENECK = 1.0  # in units of the threshold


def settings(args) -> list[tuple[str, str, float]]:
    """``(nodes, blocks, sigma)`` in the order they run."""
    out = [("bottleneck", blocks, SIGMA_BOTTLENECK) for blocks in args.blocks]
    for blocks in args.blocks:
        sigmas = args.sigma_output if blocks != "all" else args.sigma_output[:1]  # all blocks: the costliest rows
        out += [("output", blocks, sigma) for sigma in sigmas]
    return out


def units_per_token(learner, nodes: str) -> int:
    """Perturbed units per token: the bottleneck's rank, or the output's width, summed over the perturbed layers."""
    return sum(int(t.lora_A.shape[0] if nodes == "bottleneck" else t.lora_B.shape[0]) for t in learner.targets)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--blocks", nargs="+", default=["2", "all"], help="top blocks perturbed ('all': every block)")
    p.add_argument("--sigma-output", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    from hybridtune.config import ConversionSection
    from hybridtune.data import corpus, pack
    from hybridtune.learners import SetupContext
    from hybridtune.learners.alignment import gradient_alignment
    from hybridtune.learners.plasticity.rstdp_learner import RSTDPLearner
    from hybridtune.models import load_model, load_tokenizer
    from hybridtune.trainers.cache import cached_conversion

    started = time.perf_counter()
    tokenizer = load_tokenizer("default")
    domain = corpus("python-docs")
    held = pack(tokenizer, domain.documents("eval"), 128, max_tokens=args.batches * 4 * 128).as_dict()
    batches = []
    for i in range(args.batches):
        b = {k: v[4 * i:4 * (i + 1)] for k, v in held.items()}
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        batches.append(b)
    snn, _ = cached_conversion(load_model("default"), ConversionSection(), tokenizer)
    torch.manual_seed(args.seed)
    model = get_spiking_peft_model(snn, spiking_lora_config(r=8, alpha=16, target_modules=TARGETS, neuron="lif",
                                                            threshold=0.05, init_b_std=0.002))
    owned = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for nodes, blocks, sigma in settings(args):
        group = GROUP[nodes]
        sigmas = ({"sigma_bottleneck": sigma, "sigma_output": 0.0} if nodes == "bottleneck"
                  else {"sigma_bottleneck": 0.0, "sigma_output": sigma})
        for pairs in args.pairs:
            learner = RSTDPLearner(params="all", lr=1.0, estimator="antithetic", pairs=pairs, gamma=0.0,
                                   perturb="separately", max_update_norm=None, seed=args.seed,
                                   top_blocks=None if blocks == "all" else int(blocks), **sigmas)
            learner.setup(SetupContext(model=model, accelerator=None, params=owned, total_steps=1))
            tic = time.perf_counter()
            cos = gradient_alignment(model, [learner], batches, estimate=True)
            row = {"nodes": nodes, "blocks": blocks, "sigma": sigma, "pairs": pairs, "forwards": 1 + 2 * pairs,
                   "units_per_token": units_per_token(learner, nodes), "group": group,
                   "cosine": cos[f"estimate/{group}"], "cosine_all": cos["estimate/all"],
                   "seconds": round(time.perf_counter() - tic, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            for param in owned.values():
                param.requires_grad_(True)  # rstdp's setup switched them off; the next learner owns them anew
    result = {
        "benchmark": "rstdp_estimator", "model": "default (SmolLM2-135M-Instruct, converted), adapters r=8 on "
        + "/".join(TARGETS) + ", LIF bottleneck, init_b_std 0.002", "seed": args.seed,
        "data": {"corpus": "python-docs", "content_hash": domain.content_hash("eval"), "batches": args.batches,
                 "tokens_per_batch": 4 * 128},
        "settings": {"gamma": 0.0, "sigma_bottleneck": SIGMA_BOTTLENECK, "sigma_output": args.sigma_output,
                     "pairs": args.pairs, "blocks": args.blocks, "perturb": "separately", "clip": None},
        "definitions": {"sigma": "noise scale: bottleneck in units of its threshold, output absolute",
                        "cosine": "mean over batches of the cosine between the estimate of the judged group "
                                  "(bottleneck: lora_A, output: lora_B) and the true negative gradient",
                        "cosine_all": "the same over every parameter the learner updates (the judged group, "
                                      "plus the thresholds for the bottleneck: a factor without noise is not "
                                      "among them)",
                        "units_per_token": "perturbed units per token, summed over the perturbed layers",
                        "forwards": "forwards per estimate: the trainer's own and 2 per antithetic pair"},
        "rows": rows, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "hybridtune": __version__, "wall_s": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/rstdp_estimator.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
