"""Learners on the converted default model: held-out perplexity reached, time and peak memory per step vs surrogate.

Every variant trains the same spiking LoRA adapters (same rank, targets, neuron, initialisation per seed) on the same
python-docs blocks for the same number of optimizer steps (same token budget), through the library's ``Trainer``:

* ``surrogate`` -- backprop with the surrogate gradient (AdamW); the yardstick of the time / memory ratios;
* ``surrogate_top`` -- the same, but only the adapters of the top ``--eprop-top-blocks`` blocks train (the others stay
  at their initial values): the best any rule can do with the parameters eprop trains, so eprop's gap to it is the
  quality of its learning signal and the gap from it to ``surrogate`` is the depth eprop leaves out;
* ``stdp`` -- pair STDP on all factors (no backward pass; post-synaptic side: the layer output);
* ``rstdp`` -- reward-modulated learning with the antithetic node-perturbation estimator (two extra forwards with
  ± noise per pair, reward = per-token loss difference). By default only the output of the top 2 blocks' adapters is
  perturbed, so only their ``lora_B`` learns (the bottleneck estimate of ``lora_A`` measured at chance), from
  ``lora_B = 0`` (``--rstdp-init-b-std``): a random ``lora_B`` in the 28 blocks it does not train would stay;
* ``eprop_residual`` / ``eprop_one_hop`` / ``eprop_random`` -- e-prop with the error at the top of the residual stream
  delivered through each feedback path (one backward through the final norm and ``lm_head`` only). ``residual``
  reaches only layers that write to the residual stream, so that row adapts ``o_proj`` / ``down_proj`` alone; only
  the top ``--eprop-top-blocks`` blocks learn (the learner's default, 6; ``all`` for every block); AdamW with
  ``--eprop-eps`` (1e-3: a coordinate whose estimate is small moves less than ``lr``);
* ``mix_stdp_surrogate`` -- STDP on ``lora_A``, surrogate on ``lora_B`` and the neurons;
* ``mix_rstdp_surrogate`` -- R-STDP on ``lora_A`` / ``lora_B`` (with the default ``--sigma-bottleneck 0`` it moves
  only ``lora_B``), surrogate on the neurons' thresholds / decays (opt-in with ``--variants``: it pays for a backward
  pass and learns little);
* ``lora_ann`` -- plain peft LoRA on the unconverted ANN with the surrogate's optimizer (the outer yardstick; its
  perplexity is on the ANN, so it is not a ratio partner).

``--attention eager`` runs the converted model with eager attention, which returns its probabilities, so eprop's
``one_hop`` path takes ``v_proj``'s signal through the attention's mixing over tokens (``Pᵀ``) instead of the
identity that SDPA (the default) leaves it. The conversion is calibrated under SDPA either way (the cached one), and
the attention switched afterwards. The converted model's perplexity depends on the backend: a rounding difference of
a few ulps flips threshold crossings (``base_ppl`` 26.13 under SDPA, 26.35 under eager).

Per step: wall time of ``Trainer.train_step`` (odd steps) and its peak heap above the level before the step (even
steps; a background thread reads glibc's ``mallinfo2`` every 1 ms: every CPU tensor, autograd's saved activations,
spike records -- and slows the step it watches, hence the split). Ratios are medians over steps (the first of each
kind, a warm-up, excluded) of a variant over the surrogate of the same seed, then the median over seeds. Held-out perplexity: after training, on the same held-out blocks for every variant; ``base_ppl``
is the converted model before any adapter, ``start_ppl`` the converted model with the initialised adapters.
``grad_cosine``: after training, the cosine between the update each learner would apply and the true negative
gradient, on held-out batches (:func:`hybridtune.learners.alignment.gradient_alignment`), per parameter group and
``all`` over the parameters the learner *updates* (eprop: the blocks within ``top_blocks`` only), ``all_owned`` over
every parameter it owns (a parameter that never moves counts as a zero update against its gradient there).
``estimate_cosine``: the same for the rule's own estimate, what the learner hands its optimizer as ``.grad`` before
AdamW rescales each coordinate (the update itself for stdp / rstdp, which apply their rule directly).

Writes ``benchmarks/results/learners.json``: ``rows`` (one per learner: ``learner``, ``ppl_mean``, ``ppl_std``,
``time_ratio``, ``memory_ratio``, ``grad_cosine``, ``targets``, plus per-seed values and absolute numbers),
``base_ppl``, ``start_ppl``, ``seeds``, the settings, machine, command and the verdicts against the targets, every
drop measured from ``base_ppl``: the best eprop row drops >= 40 % of surrogate's drop at <= 0.6x its step time and
<= 0.5x its peak memory with grad_cosine >= 0.2; rstdp ends below base_ppl by more than 3x its seed std with a
grad_cosine above its spread; best mix within 2 % of surrogate's ppl.

Usage: python benchmarks/learners.py [--quick] [--seeds 0 1 2] [--steps 28] [--variants surrogate eprop_one_hop ...]
       [--attention eager] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from heap import PeakSampler

from hybridtune import __version__
from hybridtune.learners.eprop.learner import BLOCK_DECAY, TOP_BLOCKS

TARGETS = {"time_ratio": 0.6, "memory_ratio": 0.5, "mix_within": 0.02, "eprop_drop_share": 0.4, "eprop_cosine": 0.2,
           "rstdp_spread": 3.0}
VARIANTS = ("surrogate", "surrogate_top", "eprop_residual", "eprop_one_hop", "eprop_random", "stdp", "rstdp", "mix_stdp_surrogate",
            "mix_stdp_eprop", "mix_rstdp_surrogate", "lora_ann")
DEFAULT_VARIANTS = ("surrogate", "surrogate_top", "eprop_residual", "eprop_one_hop", "eprop_random", "stdp", "rstdp",
                    "mix_stdp_surrogate", "lora_ann")
DEFINITIONS = {
    "base_ppl": "held-out perplexity of the converted model without adapters; every drop is measured from it",
    "start_ppl": "held-out perplexity of the converted model with the initialised adapters, per seed (a row whose "
                 "init_b_std is 0 starts at base_ppl: its adapters add nothing until lora_B moves)",
    "grad_cosine": "after training, mean over --cosine-batches held-out batches of the cosine between the update the "
                   "learner would apply (after its optimizer) and the true negative gradient (a separate backward); "
                   "per parameter group (lora_A, lora_B, threshold, decay) and 'all' over the parameters the learner "
                   "updates (eprop: only the blocks within top_blocks), 'all_owned' over every parameter it owns",
    "estimate_cosine": "as grad_cosine, for the learner's estimate before its optimizer (what it hands AdamW as "
                       ".grad; the update itself for stdp / rstdp): does the rule point downhill, whatever AdamW's "
                       "per-coordinate scaling then makes of it",
    "time_ratio": "median step wall time over the surrogate's of the same seed (alternate steps, warm-up excluded), "
                  "median over seeds",
    "memory_ratio": "median peak heap above the step's start over the surrogate's of the same seed (the other steps), "
                    "median over seeds",
}
# feedback: residual reaches only residual-stream writers; every other variant adapts --targets
RESIDUAL_TARGETS = ["o_proj", "down_proj"]
RESULT = Path(__file__).parent / "results" / "learners.json"


def learners_for(variant: str, args) -> list:
    from hybridtune.learners import SurrogateLearner
    from hybridtune.learners.eprop import EpropLearner
    from hybridtune.learners.plasticity.rstdp_learner import RSTDPLearner
    from hybridtune.learners.plasticity.stdp_learner import STDPLearner

    def surrogate(params="all"):
        return SurrogateLearner(params=params, lr=args.lr, scheduler="constant", max_grad_norm=1.0)

    stdp = dict(tau_pre=args.tau, tau_post=args.tau, a_minus=1.0, max_update_norm=args.clip, oja=args.oja)
    rstdp = dict(estimator="antithetic", pairs=args.pairs, sigma_bottleneck=args.sigma_bottleneck,
                 sigma_output=args.sigma_output, gamma=args.gamma, max_update_norm=args.rstdp_clip,
                 top_blocks=args.rstdp_top_blocks, perturb=args.rstdp_perturb)
    if variant in ("surrogate", "surrogate_top", "lora_ann"):
        return [surrogate()]
    eprop = dict(lr=args.eprop_lr, scheduler=args.eprop_scheduler, max_grad_norm=1.0,
                 top_blocks=args.eprop_top_blocks, block_decay=args.eprop_block_decay, error_dtype=args.eprop_error_dtype,
                 optimizer_kwargs={"eps": args.eprop_eps})
    if variant.startswith("eprop_"):
        return [EpropLearner(params="all", feedback=variant[len("eprop_"):], **eprop)]
    if variant == "mix_stdp_eprop":
        return [STDPLearner(params="lora_A", lr=args.stdp_lr, **stdp), EpropLearner(params="rest", feedback="one_hop",
                                                                                     **eprop)]
    if variant == "stdp":
        return [STDPLearner(params="all", lr=args.stdp_lr, **stdp)]
    if variant == "rstdp":
        return [RSTDPLearner(params="all", lr=args.rstdp_lr, **rstdp)]
    if variant == "mix_stdp_surrogate":
        return [STDPLearner(params="lora_A", lr=args.stdp_lr, **stdp), surrogate("rest")]
    if variant == "mix_rstdp_surrogate":
        return [RSTDPLearner(params="lora_A|lora_B", lr=args.rstdp_lr, **rstdp), surrogate("rest")]
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def make_trainer_class():
    from hybridtune.trainers import Trainer

    class MeasuredTrainer(Trainer):
        """Records the wall time of even steps and the peak heap of odd ones (the sampler thread takes the GIL and
        glibc's arena locks, so a step it watches is slower than one it does not)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.step_seconds: list[float] = []
            self.step_peaks: list[int] = []
            self.calls = 0

        def train_step(self):
            self.calls += 1
            if self.calls % 2:
                start = time.perf_counter()
                logs = super().train_step()
                self.step_seconds.append(time.perf_counter() - start)
                return logs
            with PeakSampler(interval=1e-3) as mem:
                logs = super().train_step()
            self.step_peaks.append(mem.peak - mem.start)
            return logs

    return MeasuredTrainer


def run_variant(variant: str, seed: int, snn, ann, train, held, args, workdir: Path) -> dict:
    from accelerate.utils import set_seed

    from hybridtune.adapters import get_spiking_peft_model
    from hybridtune.config import RunConfig

    cfg = RunConfig()
    t = cfg.trainer
    t.output_dir = str(workdir / f"{variant}-{seed}")
    t.steps, t.batch_size, t.seed, t.scheduler = args.steps, args.batch_size, seed, "constant"
    t.eval_every = t.save_every = args.steps
    cfg.tracking.backend = "none"
    set_seed(seed)
    if variant == "lora_ann":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(copy.deepcopy(ann), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                              target_modules=list(args.targets)))
    else:
        model = get_spiking_peft_model(copy.deepcopy(snn), adapter_config(args, targets_for(variant, args),
                                                                          init_b_std_for(variant, args)))
        if variant == "surrogate_top":  # the blocks below eprop's top_blocks keep their initial adapters
            from hybridtune.learners.depth import count_blocks, depth_weights

            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            weights = depth_weights(trainable, count_blocks(model), args.eprop_top_blocks)
            for name, p in model.named_parameters():
                if weights.get(name, 1.0) == 0.0:
                    p.requires_grad_(False)
    trainer = make_trainer_class()(model, cfg, learners=learners_for(variant, args), train_data=train)
    started = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - started
    ppl = trainer.evaluate(held)["eval/ppl"]
    metrics = {k: v for k, v in trainer.learners[0].metrics().items() if isinstance(v, float)}
    both = grad_cosine(trainer, held, args)
    cosine = {k: v for k, v in both.items() if not k.startswith("estimate/")}
    estimate = {k[len("estimate/"):]: v for k, v in both.items() if k.startswith("estimate/")}
    out = {"variant": variant, "seed": seed, "ppl": ppl, "step_s": trainer.step_seconds,
           "peak_bytes": trainer.step_peaks, "train_s": round(train_s, 2), "metrics": metrics, "grad_cosine": cosine,
           "estimate_cosine": estimate, "init_b_std": init_b_std_for(variant, args)}
    del trainer, model
    gc.collect()
    return out


def targets_for(variant: str, args) -> list[str]:
    return RESIDUAL_TARGETS if variant == "eprop_residual" else list(args.targets)


def init_b_std_for(variant: str, args) -> float:
    """rstdp starts from lora_B = 0: it trains only the top blocks' lora_B, so a random lora_B below them would stay
    as it was drawn (with the default 0.002, +0.43 perplexity on average over the seeds)."""
    return args.rstdp_init_b_std if variant == "rstdp" else args.init_b_std


def adapter_config(args, targets=None, init_b_std=None):
    from hybridtune.adapters import spiking_lora_config

    return spiking_lora_config(r=args.rank, alpha=2 * args.rank, target_modules=list(targets or args.targets),
                               neuron=args.neuron, threshold=args.threshold,
                               init_b_std=args.init_b_std if init_b_std is None else init_b_std)


def grad_cosine(trainer, held: dict, args) -> dict[str, float]:
    """Cosine of each learner's next update, and of its estimate before the optimizer (``estimate/<group>``), with
    the true negative gradient on the first held-out batches."""
    from hybridtune.learners.alignment import gradient_alignment

    n = held["input_ids"].shape[0]
    starts = range(0, min(n, args.cosine_batches * args.batch_size), args.batch_size)
    batches = [{k: v[i:i + args.batch_size] for k, v in held.items()} for i in starts]
    return gradient_alignment(trainer.unwrapped, trainer.learners, batches, keys=trainer.model_keys, estimate=True)


def median_after_warmup(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def summarise(runs: list[dict], seeds: list[int], base_ppl: float, start_ppl: dict[int, float], args) -> dict:
    rows = []
    by = {(r["variant"], r["seed"]): r for r in runs}
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in runs)]:
        mine = [by[(variant, s)] for s in seeds if (variant, s) in by]
        ppls = [r["ppl"] for r in mine]
        time_r, mem_r = [], []
        for r in mine:
            ref = by.get(("surrogate", r["seed"]))
            if ref is not None:
                time_r.append(median_after_warmup(r["step_s"]) / median_after_warmup(ref["step_s"]))
                mem_r.append(median_after_warmup(r["peak_bytes"]) / median_after_warmup(ref["peak_bytes"]))
        rows.append({
            "learner": variant, "ppl_mean": statistics.fmean(ppls),
            "ppl_std": statistics.stdev(ppls) if len(ppls) > 1 else 0.0,
            "time_ratio": statistics.median(time_r) if time_r else None,
            "memory_ratio": statistics.median(mem_r) if mem_r else None,
            "ppl_per_seed": ppls, "step_s_median": statistics.median(median_after_warmup(r["step_s"]) for r in mine),
            "peak_mb_median": statistics.median(median_after_warmup(r["peak_bytes"]) for r in mine) / 2**20,
            "train_s": [r["train_s"] for r in mine], "final_metrics_seed0": mine[0]["metrics"],
            "grad_cosine": cosine_summary([r["grad_cosine"] for r in mine]),
            "estimate_cosine": cosine_summary([r["estimate_cosine"] for r in mine]),
            "targets": targets_for(variant, args), "init_b_std": mine[0]["init_b_std"],
            "on": "ANN (peft LoRA)" if variant == "lora_ann" else "converted spiking model",
        })
    return {"rows": rows, "verdicts": verdicts(rows, base_ppl)}


def cosine_summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per parameter group: mean and std over seeds of the held-out gradient cosine."""
    out = {}
    for group in per_seed[0]:
        values = [c[group] for c in per_seed if group in c]
        out[group] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def verdicts(rows: list[dict], base_ppl: float) -> dict:
    """The issue's targets; every drop is measured from ``base_ppl`` (the converted model without adapters)."""
    by = {r["learner"]: r for r in rows}
    out: dict[str, str] = {}
    sur = by.get("surrogate")
    eprops = [r for n, r in by.items() if n.startswith("eprop_")]
    if sur is not None and eprops:
        best = min(eprops, key=lambda r: r["ppl_mean"])
        share = (base_ppl - best["ppl_mean"]) / max(base_ppl - sur["ppl_mean"], 1e-9)
        out["eprop_drop"] = (f"{'met' if share >= TARGETS['eprop_drop_share'] else 'MISSED'}: {best['learner']} "
                             f"drop {base_ppl - best['ppl_mean']:.3f} = {100 * share:.2f} % of surrogate's "
                             f"{base_ppl - sur['ppl_mean']:.3f} (target >= 40 %)")
        top = by.get("surrogate_top")
        if top is not None:  # not a target: how much of what backprop reaches on the same blocks eprop reaches
            top_share = (base_ppl - best["ppl_mean"]) / max(base_ppl - top["ppl_mean"], 1e-9)
            out["eprop_vs_surrogate_top"] = (f"info: {best['learner']} drop = {100 * top_share:.0f} % of "
                                             f"surrogate_top's {base_ppl - top['ppl_mean']:.3f} (backprop on the "
                                             f"same top blocks); surrogate_top's own share of surrogate's drop: "
                                             f"{100 * (base_ppl - top['ppl_mean']) / max(base_ppl - sur['ppl_mean'], 1e-9):.0f} %")
        cos = best["grad_cosine"]["all"]["mean"]
        # the cosine is taken after each learner's optimizer (AdamW), which lowers even an exact gradient's; the
        # estimate's cosine (before AdamW) is reported beside it, not judged in its place
        ref = sur["grad_cosine"]["all"]["mean"]
        est, est_ref = best["estimate_cosine"]["all"]["mean"], sur["estimate_cosine"]["all"]["mean"]
        out["eprop_grad_cosine"] = (f"{'met' if cos >= TARGETS['eprop_cosine'] else 'MISSED'}: {cos:.3f} "
                                    f"(target >= 0.2; surrogate's, through the same AdamW: {ref:.3f}); before "
                                    f"AdamW, the estimates: {best['learner']} {est:.3f}, surrogate {est_ref:.3f}")
        for key, target in (("time_ratio", TARGETS["time_ratio"]), ("memory_ratio", TARGETS["memory_ratio"])):
            if best[key] is not None:
                out[f"eprop_{key}"] = (f"{'met' if best[key] <= target else 'MISSED'}: {best[key]:.3f} "
                                       f"(target <= {target})")
    r = by.get("rstdp")
    if r is not None and len(r["ppl_per_seed"]) < 2:  # a spread needs seeds: one seed judges nothing
        out["rstdp_below_base"] = out["rstdp_grad_cosine"] = "not judged: one seed has no spread (run >= 3 seeds)"
    elif r is not None:
        drop, spread = base_ppl - r["ppl_mean"], r["ppl_std"]
        ok = drop > TARGETS["rstdp_spread"] * spread
        out["rstdp_below_base"] = (f"{'met' if ok else 'MISSED'}: base {base_ppl:.4f} -> {r['ppl_mean']:.4f} "
                                   f"(drop {drop:+.4f}, target > 3 x seed std {spread:.4f})")
        cos = r["grad_cosine"]["all"]
        out["rstdp_grad_cosine"] = (f"{'met' if cos['mean'] > cos['std'] else 'MISSED'}: {cos['mean']:.3f} "
                                    f"± {cos['std']:.3f} (target > 0 by more than its spread)")
    mixes = [by[n] for n in by if n.startswith("mix_")]
    if mixes and sur is not None:
        best = min(mixes, key=lambda m: m["ppl_mean"])
        gap = best["ppl_mean"] / sur["ppl_mean"] - 1.0
        out["best_mix_within_2pct"] = (f"{'met' if gap <= TARGETS['mix_within'] else 'MISSED'}: {best['learner']} "
                                       f"{best['ppl_mean']:.4f} vs surrogate {sur['ppl_mean']:.4f} "
                                       f"({100 * gap:+.2f} %)")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, 4 steps, shorter blocks (a smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
                   help="mix_rstdp_surrogate (R-STDP on lora_A / lora_B, surrogate on thresholds) is opt-in")
    p.add_argument("--rank", type=int, default=8)
    # gate_proj has a one-hop path too (down_projᵀ times the activation's derivative); with it, eprop went from 23.32
    # to 22.80 and backprop on the same top 6 blocks from 22.71 to 22.06 (seed 0, this budget)
    p.add_argument("--targets", nargs="+", default=["v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    p.add_argument("--neuron", default="lif", choices=["lif", "mt", "heaviside"])
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--init-b-std", type=float, default=0.002)
    p.add_argument("--lr", type=float, default=1e-3, help="surrogate / peft LoRA learning rate (AdamW)")
    p.add_argument("--stdp-lr", type=float, default=1e-4)
    # top 2 blocks, both factors, sigma_output 0.01, 1 pair each, clip 0.05 (seed 0, start 26.41): lr 0.1 -> 26.47,
    # 1.0 -> 26.56; every step hits the clip, so the step length is clip-bound at either lr
    p.add_argument("--rstdp-lr", type=float, default=0.1)
    # measured (seed 0, this budget, one_hop, top 6 blocks, base_ppl 26.13, AdamW eps 1e-8): without gate_proj
    # lr 1e-3 -> 23.32, 3e-3 -> 22.99; with it 1e-3 -> 22.80, 3e-3 -> 22.56
    p.add_argument("--eprop-lr", type=float, default=6e-3)
    # AdamW's eps floors its per-coordinate normaliser: at 1e-8 every coordinate moves by about lr whatever its
    # estimate, which turns the rule's direction (cosine 0.54 with the true gradient) into an update of cosine 0.14;
    # seed 0, one_hop: eps 1e-8 lr 3e-3 -> 22.52 (update cosine 0.14); 3e-4 / 3e-3 -> 22.57 (0.20); 1e-3 / 3e-3 ->
    # 22.92 (0.21), 1e-3 / 6e-3 -> 22.50 (0.24), 1e-3 / 1e-2 -> 22.88 (0.24); SGD momentum 0.9, lr 0.1 -> 23.19 (0.27)
    # also tried (seed 0, one_hop, eps 1e-3, lr 6e-3 -> 22.50 unless said): lora_B's lr x2 / x4 (LoRA+) 22.73 / 23.16;
    # lora_A's x0.5 / x2 22.86 / 22.62; thresholds and decays x3 / x0 22.58 / 22.76; betas (0.9, 0.99) 22.53,
    # (0.95, 0.999) 22.76; lr 7e-3 22.48; top 8 blocks with block_decay 0.8 22.57; v_proj not trained 22.64;
    # --init-b-std 0 22.77 (surrogate_top: 22.055 against 22.060, unchanged). The weakest estimate is v_proj's
    # (cosine 0.22 for lora_A, 0.37 for lora_B; 0.6-0.75 elsewhere): one_hop takes attention's mixing over tokens
    # as the identity
    # seed 0, one_hop, lr 6e-3 (22.50 constant): linear decay 22.68, cosine 22.90, linear at 9e-3 22.99; top 7 / 8
    # blocks at block_decay 1: 22.91 / 22.81. The budget is short: decaying the lr only loses steps.
    p.add_argument("--eprop-scheduler", default="constant", help="eprop: the LR schedule (a transformers name)")
    p.add_argument("--eprop-eps", type=float, default=1e-3, help="eprop: AdamW's eps")
    p.add_argument("--eprop-top-blocks", type=lambda v: None if v == "all" else int(v), default=TOP_BLOCKS,
                   help="eprop: only the top N decoder blocks learn ('all': every block; default: the learner's)")
    p.add_argument("--eprop-block-decay", type=float, default=BLOCK_DECAY,
                   help="eprop: lr of a block k blocks below the top is lr * decay**k (default: the learner's)")
    # bfloat16 halves the learner's largest GEMM ([tokens, vocab] @ [vocab, hidden]) on CPUs with bf16 units
    p.add_argument("--eprop-error-dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="eprop: precision of the top error's GEMM through lm_head (the learner's default: float32)")
    p.add_argument("--cosine-batches", type=int, default=2, help="held-out batches for grad_cosine")
    p.add_argument("--tau", type=float, default=8.0)
    p.add_argument("--gamma", type=float, default=0.0, help="rstdp: credit of later tokens' loss differences")
    # rstdp_estimator.json: the bottleneck estimate of lora_A is at chance with 1, 4 or 16 pairs; the output estimate
    # of lora_B on the top 2 blocks reaches cosine 0.03 with 4 pairs at sigma_output 0.2 (0.02 at 0.01). Seed 0, this
    # budget, lora_B only (init 0), sigma_output 0.2, 4 pairs, clip 0.05: 26.134 -> 26.018 (update cosine 0.012);
    # 16 pairs (affordable since the perturbed forwards re-run only the top 2 blocks): clip 0.05 25.890 (cosine
    # 0.033), clip 0.1 25.858 (0.035)
    p.add_argument("--pairs", type=int, default=16, help="rstdp: antithetic pairs per micro-batch")
    p.add_argument("--sigma-bottleneck", type=float, default=0.0,
                   help="rstdp: bottleneck noise, in units of θ (0: lora_A and the thresholds do not learn)")
    p.add_argument("--sigma-output", type=float, default=0.2, help="rstdp: adapter-output noise")
    p.add_argument("--rstdp-init-b-std", type=float, default=0.0,
                   help="rstdp's row: lora_B's initial std (the other rows: --init-b-std)")
    p.add_argument("--clip", type=float, default=0.01, help="stdp: per-layer max update norm")
    p.add_argument("--rstdp-clip", type=float, default=0.1, help="rstdp: per-layer max update norm")
    p.add_argument("--rstdp-top-blocks", type=lambda v: None if v == "all" else int(v), default=2,
                   help="rstdp: only the top N blocks are perturbed and learn ('all': every block)")
    p.add_argument("--rstdp-perturb", choices=["together", "separately"], default="separately",
                   help="rstdp: bottleneck and output noise in one pair of forwards or a pair each")
    p.add_argument("--oja", type=float, default=0.0)
    # seed 0, one_hop, under eager attention (base 26.35): v_proj's signal through Pᵀ 22.60, through the identity (as
    # under SDPA) 22.64; the update's cosine with the gradient, lora_A 0.20 vs 0.12, thresholds 0.52 vs 0.16, all
    # 0.248 vs 0.239. Under SDPA (base 26.13) the same run reaches 22.50.
    p.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa",
                   help="the converted model's attention implementation (eager returns the attention probabilities, "
                        "which eprop's one_hop path uses to take v_proj's signal through the mixing over tokens)")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.block_size, args.eval_tokens = args.seeds[:2], 4, 64, 512
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")

    from hybridtune.config import ConversionSection
    from hybridtune.data import corpus, pack
    from hybridtune.models import load_model, load_tokenizer
    from hybridtune.trainers import evaluate_perplexity
    from hybridtune.trainers.cache import cached_conversion

    started = time.perf_counter()
    tokenizer = load_tokenizer("default")
    domain = corpus("python-docs")
    needed = args.steps * args.batch_size * args.block_size * 2
    train = pack(tokenizer, domain.documents("train"), args.block_size, max_tokens=needed)
    held = pack(tokenizer, domain.documents("eval"), args.block_size, max_tokens=args.eval_tokens).as_dict()
    ann = load_model("default")
    snn, _ = cached_conversion(copy.deepcopy(ann), ConversionSection(), tokenizer)
    snn.set_attn_implementation(args.attention)
    base_ppl = evaluate_perplexity(snn, held, args.batch_size)["ppl"]
    print(f"base (converted, no adapter) ppl {base_ppl:.4f}", flush=True)
    runs, start_ppl = [], {}
    from hybridtune.adapters import get_spiking_peft_model

    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            torch.manual_seed(seed)
            fresh = get_spiking_peft_model(copy.deepcopy(snn), adapter_config(args))
            start_ppl[seed] = evaluate_perplexity(fresh, held, args.batch_size, keys=("input_ids", "attention_mask",
                                                                                      "doc_start"))["ppl"]
            del fresh
            print(f"seed {seed}: start ppl (adapters initialised) {start_ppl[seed]:.4f}", flush=True)
            for variant in args.variants:
                r = run_variant(variant, seed, snn, ann, train, held, args, Path(tmp))
                runs.append(r)
                print(f"seed {seed} {variant:22s} ppl {r['ppl']:.4f}  step {median_after_warmup(r['step_s']):.2f}s "
                      f"peak {median_after_warmup(r['peak_bytes']) / 2**20:.0f} MB  ({r['train_s']:.0f}s)  "
                      f"grad_cosine {r['grad_cosine']}", flush=True)
    summary = summarise(runs, args.seeds, base_ppl, start_ppl, args)
    result = {
        "benchmark": "learners", "model": "default (SmolLM2-135M-Instruct, converted: ffn_act + linear_inputs, "
        "dynamic thresholds)", "data": {"corpus": "python-docs", "content_hash": domain.content_hash("train"),
                                       "train_tokens_per_run": args.steps * args.batch_size * args.block_size,
                                       "eval_tokens": int(held["attention_mask"].sum())},
        "base_ppl": base_ppl, "start_ppl": start_ppl, "seeds": args.seeds, **summary,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "definitions": DEFINITIONS,
        "targets": TARGETS, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "hybridtune": __version__, "wall_s": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/learners.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "load_average_1min": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for row in summary["rows"]:
        tr = "-" if row["time_ratio"] is None else f"{row['time_ratio']:.3f}"
        mr = "-" if row["memory_ratio"] is None else f"{row['memory_ratio']:.3f}"
        cos, est = row["grad_cosine"]["all"], row["estimate_cosine"]["all"]
        print(f"{row['learner']:22s} ppl {row['ppl_mean']:.4f} ± {row['ppl_std']:.4f}  time x{tr}  memory x{mr}  "
              f"grad_cosine {cos['mean']:+.3f} ± {cos['std']:.3f}  estimate {est['mean']:+.3f}")
    for k, v in summary["verdicts"].items():
        print(f"{k}: {v}")
    return result


if __name__ == "__main__":
    main()
