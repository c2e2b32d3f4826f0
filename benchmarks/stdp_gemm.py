"""Micro-benchmark: whole-sequence STDP as two GEMMs vs the per-step outer-product loop (one layer, CPU).

One 576 -> 1536 linear (a SmolLM2-135M MLP up-projection), 256 tokens x batch 4, float32, binary spikes. Methods:

* ``gemm``        — :func:`hybridtune.learners.plasticity.stdp_update`: chunked trace scan + two [out, N] x [N, in]
  GEMMs, N = batch x tokens;
* ``online_gemm`` — a Python loop over tokens, one batched [out, B] x [B, in] GEMM per term per step
  (:func:`~hybridtune.learners.plasticity.stdp_online_step`);
* ``loop_outer``  — a Python loop over tokens forming per-sample outer products ``[B, out, in]`` each step and
  summing them (the multi-step form of SpikingJelly's ``STDPLearner``).

All three compute the same ΔW (checked: max |difference| is reported). Writes ``benchmarks/results/stdp_gemm.json``
with the median wall time of each method.

Usage:
    python benchmarks/stdp_gemm.py [--repeats 9] [--loop-repeats 3] [--threads 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hybridtune.learners.plasticity import stdp_online_step, stdp_update

IN_FEATURES, OUT_FEATURES, BATCH, TOKENS = 576, 1536, 4, 256
TAU = 4.0
A_PLUS, A_MINUS = 1.0, 1.05


def make_spikes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s_pre = (torch.rand(BATCH, TOKENS, IN_FEATURES, generator=g) < 0.2).float()
    s_post = (torch.rand(BATCH, TOKENS, OUT_FEATURES, generator=g) < 0.1).float()
    return s_pre, s_post


def gemm(s_pre: torch.Tensor, s_post: torch.Tensor, lam: float) -> torch.Tensor:
    return stdp_update(s_pre, s_post, decay_pre=lam, decay_post=lam, a_plus=A_PLUS, a_minus=A_MINUS)


def online_gemm(s_pre: torch.Tensor, s_post: torch.Tensor, lam: float) -> torch.Tensor:
    x_pre, x_post = torch.zeros(BATCH, IN_FEATURES), torch.zeros(BATCH, OUT_FEATURES)
    dw = torch.zeros(OUT_FEATURES, IN_FEATURES)
    for t in range(TOKENS):
        step, x_pre, x_post = stdp_online_step(
            s_pre[:, t], s_post[:, t], x_pre, x_post, decay_pre=lam, decay_post=lam, a_plus=A_PLUS, a_minus=A_MINUS
        )
        dw += step
    return dw


def loop_outer(s_pre: torch.Tensor, s_post: torch.Tensor, lam: float) -> torch.Tensor:
    x_pre, x_post = torch.zeros(BATCH, IN_FEATURES), torch.zeros(BATCH, OUT_FEATURES)
    dw = torch.zeros(OUT_FEATURES, IN_FEATURES)
    for t in range(TOKENS):
        x_pre = lam * x_pre + s_pre[:, t]
        x_post = lam * x_post + s_post[:, t]
        ltp = s_post[:, t, :, None] * x_pre[:, None, :]  # [B, out, in]
        ltd = x_post[:, :, None] * s_pre[:, t, None, :]
        dw += (A_PLUS * ltp - A_MINUS * ltd).sum(0)
    return dw / BATCH


def timed(fn, args, repeats: int) -> tuple[list[float], torch.Tensor]:
    out = fn(*args)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return times, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of the fast methods")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the two per-token loops")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stdp_gemm.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lam = math.exp(-1.0 / TAU)
    s_pre, s_post = make_spikes()
    results, outputs = {}, {}
    for name, fn, repeats in (
        ("gemm", gemm, args.repeats),
        ("online_gemm", online_gemm, args.loop_repeats),
        ("loop_outer", loop_outer, args.loop_repeats),
    ):
        with torch.no_grad():
            times, outputs[name] = timed(fn, (s_pre, s_post, lam), repeats)
        results[name] = {"median_s": statistics.median(times), "times_s": times}
        print(f"{name:12s} median {results[name]['median_s'] * 1e3:10.2f} ms over {repeats} runs")

    ref = outputs["loop_outer"]
    report = {
        "benchmark": "stdp_gemm",
        "layer": {"in_features": IN_FEATURES, "out_features": OUT_FEATURES},
        "batch": BATCH,
        "tokens": TOKENS,
        "dtype": "float32",
        "device": "cpu",
        "tau": TAU,
        "spike_rates": {"pre": 0.2, "post": 0.1},
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": results,
        "speedup_gemm_vs_loop_outer": results["loop_outer"]["median_s"] / results["gemm"]["median_s"],
        "speedup_gemm_vs_online_gemm": results["online_gemm"]["median_s"] / results["gemm"]["median_s"],
        "max_abs_update": ref.abs().max().item(),
        "max_abs_diff_gemm_vs_loop_outer": (outputs["gemm"] - ref).abs().max().item(),
        "max_abs_diff_online_gemm_vs_loop_outer": (outputs["online_gemm"] - ref).abs().max().item(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"gemm is {report['speedup_gemm_vs_loop_outer']:.0f}x faster than the outer-product loop "
        f"(max |diff| {report['max_abs_diff_gemm_vs_loop_outer']:.2e} on values up to {report['max_abs_update']:.1f}); "
        f"wrote {args.out}"
    )
    return report


if __name__ == "__main__":
    main()
