"""Fused CUDA spike-LoRA kernels against the unfused eager sequence and against ``torch.compile`` of it (GPU only).

Per shape (``tokens`` rows = batch x steps, square ``width`` = d_in = d_out, LoRA ``rank``) and dtype:

* ``fused``: ``hybridtune_C::spike_lora_fwd`` (shrink + neuron, expand + bias, cuBLAS base GEMM with beta = 1) and,
  for ``fwd_bwd``, ``cuda_ext.spike_lora_backward_cuda`` behind an autograd.Function (independent of how the
  public op's backward is wired);
* ``eager``: what a peft + snnTorch user writes: ``linear(x, W, b) + scaling * lora_B(neuron(lora_A(x)))``, the neuron
  as separate torch ops (mt: round + clamp with a straight-through estimator; heaviside: snnTorch's surrogate spike;
  lif: a loop over tokens), backward by autograd;
* ``compile``: ``torch.compile`` of that eager function (default mode; not for lif, whose token loop would unroll).

Passes: ``fwd`` (no grad) and ``fwd_bwd`` (gradients for x, lora_A, lora_B, threshold; W and bias frozen). Prefill:
batch 1 x ``tokens`` steps; decode: ``tokens`` sequences x 1 step. Time: CUDA events, median over ``--repeats``
samples after warm-up (decode samples average 20 back-to-back calls). ``speedup_vs_*`` = their time / fused time.

``bandwidth_fraction``: the LoRA branch's minimum traffic divided by its time, over the device-to-device copy
bandwidth measured in the same run. LoRA-branch time = fused time - time of the base GEMM(s) alone (``addmm`` forward;
plus ``grad_out @ W`` for fwd_bwd). Minimum traffic: x, lora_A, lora_B read once and spikes written once (fwd); fwd_bwd
adds x and grad_out read once more and spikes, lora_A, lora_B read and their gradients written once. None when the
difference is within noise (<= 0).

Writes ``--out`` (default ``benchmarks/results/spike_lora_op.json``): ``device``, ``copy_bandwidth_gbs``, ``rows``
(tokens, width, rank, dtype, pass, speedup_vs_eager, speedup_vs_compile, bandwidth_fraction, times in ms), and prints
a markdown table. Without CUDA (or without the extension) it exits with status 2 and writes nothing.
Usage: python benchmarks/spike_lora_op.py [--quick] [--budget-s 240] [--neuron mt] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PREFILL_TOKENS, DECODE_TOKENS = (4096, 8192), (1, 16, 64)
WIDTHS, RANKS = (2048, 4096), (8, 16, 64)
QUICK_PREFILL = [(4096, 4096, r) for r in RANKS] + [(8192, 4096, 16), (4096, 2048, 16)]
QUICK_DECODE = [(t, 4096, 16) for t in DECODE_TOKENS]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "spike_lora_op.json"
SURROGATE, SLOPE, SCALING, MAX_SPIKES = "atan", 2.0, 2.0, 4


def unfused_spike_lora(x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state,
                       max_spikes, surrogate, slope):
    """The eager peft-style sequence; same forward as ``hybridtune.ops.reference.spike_lora_forward``."""
    from hybridtune.neurons.surrogates import get_surrogate

    result = F.linear(x, weight, bias)
    h = F.linear(x, lora_A)
    theta = threshold.to(h.dtype)
    if neuron == "mt":
        u = h / theta
        q = torch.round(u)
        if max_spikes > 0:
            q = q.clamp(-max_spikes, max_spikes)
        y = (u + (q - u).detach()) * theta  # straight-through round
        spikes = q
    elif neuron == "heaviside":
        y = spikes = get_surrogate(surrogate, slope).spike(h - theta)
    else:
        sg = get_surrogate(surrogate, slope)
        dec = decay.to(h.dtype)
        v = h.new_zeros(h.shape[0], h.shape[2]) if state is None else state.to(h.dtype)
        out = []
        for t in range(h.shape[1]):
            gain = dec if reset is None else dec * (~reset[:, t, None]).to(h.dtype)
            v = gain * v + h[:, t]
            s = sg.spike(v - theta)
            v = v - s.detach() * theta  # soft reset, detached like snnTorch
            out.append(s)
        y = spikes = torch.stack(out, dim=1)
    return result + F.linear(y, lora_B) * scaling, spikes


def make_inputs(tokens: int, width: int, rank: int, dtype: torch.dtype, decode: bool, device: str = "cuda",
                seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, steps = (tokens, 1) if decode else (1, tokens)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    h_scale = 1.0 / width ** 0.5  # h ~ N(0, 1): a realistic mix of silent and firing lanes
    return dict(x=rnd(batch, steps, width), weight=rnd(width, width, scale=h_scale), bias=rnd(width),
                lora_A=rnd(rank, width, scale=h_scale), lora_B=rnd(width, rank, scale=0.01),
                threshold=torch.full((rank,), 0.5, device=device), decay=torch.full((rank,), 0.9, device=device),
                reset=None, state=None)


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, threshold, decay, neuron):
        out, spikes, _ = torch.ops.hybridtune_C.spike_lora_fwd(x, weight, bias, lora_A, lora_B, SCALING, neuron,
                                                               threshold, decay, None, None, MAX_SPIKES, SURROGATE,
                                                               SLOPE)
        ctx.save_for_backward(x, weight, lora_A, lora_B, threshold, decay, spikes)
        ctx.neuron, ctx.has_bias = neuron, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from hybridtune.ops.cuda_ext import spike_lora_backward_cuda

        x, weight, lora_A, lora_B, threshold, decay, spikes = ctx.saved_tensors
        nig = ctx.needs_input_grad
        needs = (nig[0], nig[1], ctx.has_bias and nig[2], nig[3], nig[4], nig[5], nig[6], False)
        gx, gw, gb, ga, gbb, gth, gdec, _ = spike_lora_backward_cuda(
            grad_out, None, None, x, weight, lora_A, lora_B, spikes, SCALING, ctx.neuron, threshold, decay, None,
            None, MAX_SPIKES, SURROGATE, SLOPE, needs)
        return gx, gw, gb, ga, gbb, gth, gdec, None


def timed(fn, repeats: int, inner: int) -> float:
    """Median milliseconds per call over ``repeats`` samples of ``inner`` back-to-back calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples)


def copy_bandwidth(repeats: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB buffer."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), repeats, 1)
    return 2 * src.numel() / (ms * 1e-3)


def lora_bytes(tokens: int, width: int, rank: int, itemsize: int, pass_: str) -> int:
    fwd = (tokens * width + 2 * rank * width + tokens * rank) * itemsize
    if pass_ == "fwd":
        return fwd
    return fwd + (2 * tokens * width + tokens * rank + 4 * rank * width) * itemsize


def _op_args(b: dict, neuron: str) -> tuple:
    return (b["x"], b["weight"], b["bias"], b["lora_A"], b["lora_B"], SCALING, neuron, b["threshold"], b["decay"],
            None, None, MAX_SPIKES, SURROGATE, SLOPE)


def _callables(a: dict, pass_: str, neuron: str):
    """``(fused, eager(fn), base)`` closures for one pass; ``eager`` takes the eager or the compiled function."""
    width = a["x"].shape[-1]
    x2 = a["x"].reshape(-1, width)
    if pass_ == "fwd":
        def fused():
            with torch.no_grad():
                torch.ops.hybridtune_C.spike_lora_fwd(*_op_args(a, neuron))

        def eager(fn):
            with torch.no_grad():
                fn(*_op_args(a, neuron))

        def base():
            torch.addmm(a["bias"], x2, a["weight"].t())

        return fused, eager, base

    leaves = ("x", "lora_A", "lora_B", "threshold")
    b = {k: (v.detach().requires_grad_(True) if k in leaves else v) for k, v in a.items()}
    inputs = [b[k] for k in leaves]
    grad_out = torch.randn_like(a["x"])

    def fused():
        out = _Fused.apply(b["x"], b["weight"], b["bias"], b["lora_A"], b["lora_B"], b["threshold"], b["decay"],
                           neuron)
        torch.autograd.grad(out, inputs, grad_out)

    def eager(fn):
        out, _ = fn(*_op_args(b, neuron))
        torch.autograd.grad(out, inputs, grad_out)

    def base():
        torch.addmm(a["bias"], x2, a["weight"].t())
        grad_out.reshape(-1, width) @ a["weight"]

    return fused, eager, base


def measure(tokens, width, rank, dtype, decode, neuron, repeats, compiled, copy_bw: float) -> list[dict]:
    a = make_inputs(tokens, width, rank, dtype, decode)
    inner = 20 if decode else 1
    rows = []
    for pass_ in ("fwd", "fwd_bwd"):
        fused, eager, base = _callables(a, pass_, neuron)
        t_fused = timed(fused, repeats, inner)
        t_eager = timed(lambda: eager(unfused_spike_lora), repeats, inner)  # noqa: B023 - used within the iteration
        t_compile = None
        if compiled is not None:
            t_compile = timed(lambda: eager(compiled), repeats, inner)  # noqa: B023
        t_base = timed(base, repeats, inner)
        lora_ms = t_fused - t_base
        frac = None
        if lora_ms > 0:
            frac = lora_bytes(tokens, width, rank, a["x"].element_size(), pass_) / (lora_ms * 1e-3) / copy_bw
        rows.append(dict(tokens=tokens, width=width, rank=rank, dtype=str(dtype).removeprefix("torch."), pass_=pass_,
                         phase="decode" if decode else "prefill", neuron=neuron,
                         speedup_vs_eager=t_eager / t_fused,
                         speedup_vs_compile=None if t_compile is None else t_compile / t_fused,
                         bandwidth_fraction=frac, fused_ms=t_fused, eager_ms=t_eager, compile_ms=t_compile,
                         base_gemm_ms=t_base))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the subset gpu_check.sh runs (a few minutes)")
    parser.add_argument("--neuron", default="mt", choices=("mt", "heaviside", "lif"))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=None, help="stop adding shapes after this many seconds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("spike_lora_op benchmark: no CUDA device visible (torch "
              f"{torch.__version__}, cuda build {torch.version.cuda}); it measures GPU kernels only. Nothing written.",
              file=sys.stderr)
        return 2
    from hybridtune.ops import cuda_ext

    try:
        cuda_ext.load_extension()
    except cuda_ext.CudaExtensionUnavailable as exc:
        print(f"spike_lora_op benchmark: the CUDA extension is unavailable: {exc}\nNothing written.", file=sys.stderr)
        return 2
    started = time.monotonic()
    copy_bw = copy_bandwidth(args.repeats)
    shapes = ([(t, w, r, False) for t, w, r in QUICK_PREFILL] + [(t, w, r, True) for t, w, r in QUICK_DECODE]
              if args.quick else
              [(t, w, r, False) for t in PREFILL_TOKENS for w in WIDTHS for r in RANKS]
              + [(t, w, 16, True) for t in DECODE_TOKENS for w in WIDTHS])
    compiled = None
    if not args.no_compile and args.neuron != "lif":
        # room for one graph per (shape, grad mode): hitting the limit would silently time eager as "compile"
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        compiled = torch.compile(unfused_spike_lora)
    rows, complete = [], True
    for dtype_name in args.dtypes:
        for tokens, width, rank, decode in shapes:
            if args.budget_s is not None and time.monotonic() - started > args.budget_s:
                complete = False
                break
            if args.neuron == "lif" and not decode and tokens > 4096:
                continue  # the eager token loop alone would take minutes
            rows += measure(tokens, width, rank, getattr(torch, dtype_name), decode, args.neuron, args.repeats,
                            compiled, copy_bw)
    for row in rows:
        row["pass"] = row.pop("pass_")
    result = dict(
        benchmark="spike_lora_op", device=torch.cuda.get_device_name(), torch=torch.__version__,
        cuda=torch.version.cuda, copy_bandwidth_gbs=copy_bw / 1e9, neuron=args.neuron, surrogate=SURROGATE,
        scaling=SCALING, seed=0, repeats=args.repeats, complete=complete, command=" ".join(sys.argv),
        elapsed_s=time.monotonic() - started,
        bandwidth_definition="LoRA-branch minimum bytes / (fused time - base GEMM time) / copy bandwidth",
        rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"wrote {args.out}" + ("" if complete else " (stopped early: --budget-s)"))
    return 0


def markdown_table(result: dict) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"Device: {result['device']}; copy bandwidth {result['copy_bandwidth_gbs']:.0f} GB/s; neuron "
             f"{result['neuron']}", "",
             "| phase | tokens | width | rank | dtype | pass | fused ms | vs eager | vs compile | LoRA bw frac |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['phase']} | {r['tokens']} | {r['width']} | {r['rank']} | {r['dtype']} | {r['pass']} | "
                     f"{r['fused_ms']:.3f} | {fmt(r['speedup_vs_eager'], '.2f')}x | "
                     f"{fmt(r['speedup_vs_compile'], '.2f')}x | {fmt(r['bandwidth_fraction'], '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
