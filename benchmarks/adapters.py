"""Training-step cost of spiking LoRA against plain peft LoRA of the same rank, on CPU.

Compared, per sequence length (batch 1, real text from the python-docs train split):

* ``spiking``: spiking LoRA on the *converted* default model (``hybridtune.conversion``, default coverage
  ``ffn_act + linear_inputs``), surrogate backward through the ``spike_lora`` op;
* ``lora``: plain peft LoRA (same rank, alpha, targets) on the ANN default model -- the reference of the ratios;
* ``spiking_ann``: spiking LoRA on the unconverted ANN (separates the adapter's own overhead from the conversion's);
* ``spiking_<neuron>`` for each ``--extra-neurons``: spiking LoRA with that bottleneck neuron on the converted model.

One step = forward with labels + backward + ``zero_grad(set_to_none=True)``; no optimizer (identical for both).
Time: median over ``--repeats`` steps after one warm-up, variants interleaved step by step so machine load drifts hit
all of them alike. The ratio uses the process CPU time of the step (``time.process_time``): on a shared machine the
wall time of anything longer than a scheduler time slice is stretched by whatever else runs (we saw 10x), while the
CPU time counts only this process's own work; wall-time ratios are reported beside it.
Peak memory: a separate pass per variant; a sampler thread reads glibc's ``mallinfo2`` (heap bytes in use: arena +
mmapped blocks, i.e. every CPU tensor storage, autograd's saved tensors, gradients) every 0.2 ms during one step;
the peak minus the value just before the step is the step's peak memory above the resident weights (median over
``--mem-repeats``). Ratios are spiking / lora.

Writes ``benchmarks/results/adapters.json`` (``rows``: one per sequence length with ``seq_len``,
``step_time_ratio``, ``peak_memory_ratio``, absolute numbers, and the adapter-only ratios).
Usage: python benchmarks/adapters.py [--seq-lens 128 512] [--repeats 5] [--neuron mt] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from heap import PeakSampler

from hybridtune import __version__

TIME_TARGET, MEMORY_TARGET = 1.3, 1.2


def train_step(model, batch: dict) -> None:
    loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def build_models(args):
    from peft import LoraConfig, get_peft_model

    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config

    def base():
        if args.tiny:
            from hybridtune.testing import tiny_model

            return tiny_model("llama")
        from hybridtune.models import load_model

        return load_model("default")

    common = dict(r=args.rank, target_modules=list(args.targets))
    lora = get_peft_model(base(), LoraConfig(lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             **common))
    spiking_cfg = dict(alpha=args.alpha, neuron=args.neuron, threshold=args.threshold, **common)
    conversion = None
    from hybridtune.conversion import ConversionConfig, convert

    conversion = ConversionConfig(compensation=False)  # as measured (the default before compensation was)
    spiking = get_spiking_peft_model(convert(base(), conversion), spiking_lora_config(**spiking_cfg))
    spiking_ann = get_spiking_peft_model(base(), spiking_lora_config(**spiking_cfg))
    models = {"lora": lora, "spiking": spiking, "spiking_ann": spiking_ann}
    for neuron in args.extra_neurons:
        cfg = dict(spiking_cfg, neuron=neuron)
        models[f"spiking_{neuron}"] = get_spiking_peft_model(convert(base(), conversion), spiking_lora_config(**cfg))
    for m in models.values():
        m.train()
    return models, conversion


def text_batch(args, seq_len: int) -> dict:
    if args.tiny:
        ids = torch.randint(3, 256, (args.batch, seq_len), generator=torch.Generator().manual_seed(0))
    else:
        from hybridtune.data import corpus, pack
        from hybridtune.models import load_tokenizer

        blocks = pack(load_tokenizer("default"), corpus("python-docs").documents("train"), seq_len,
                      max_tokens=seq_len * args.batch)
        ids = blocks.input_ids[: args.batch]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def measure(models: dict, batch: dict, repeats: int, mem_repeats: int) -> dict:
    for m in models.values():  # warm-up (first-call allocations, lazy init)
        train_step(m, batch)
    times: dict[str, list[float]] = {k: [] for k in models}
    walls: dict[str, list[float]] = {k: [] for k in models}
    for i in range(repeats):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            train_step(models[name], batch)
            times[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - start)
    peaks: dict[str, list[int]] = {k: [] for k in models}
    for _ in range(mem_repeats):
        for name, model in models.items():
            with PeakSampler() as sampler:
                train_step(model, batch)
            peaks[name].append(sampler.peak - sampler.start)
    return {name: {"step_s": statistics.median(times[name]), "step_s_all": [round(t, 4) for t in times[name]],
                   "wall_s": statistics.median(walls[name]), "wall_s_all": [round(t, 4) for t in walls[name]],
                   "peak_mb": statistics.median(peaks[name]) / 2**20,
                   "peak_mb_all": [round(p / 2**20, 1) for p in peaks[name]]} for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--neuron", default="mt", choices=["mt", "lif", "heaviside"])
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--extra-neurons", nargs="*", default=["lif"], choices=["mt", "lif", "heaviside"],
                        help="further bottleneck neurons measured on the converted model (their own ratio columns)")
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj", "up_proj", "down_proj"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a shared, loaded machine")
    parser.add_argument("--tiny", action="store_true", help="tiny random llama instead of the default model (smoke)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapters.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models, conversion = build_models(args)
    rows = []
    for seq_len in args.seq_lens:
        res = measure(models, text_batch(args, seq_len), args.repeats, args.mem_repeats)
        spk, ref, spk_ann = res["spiking"], res["lora"], res["spiking_ann"]
        row = {
            "seq_len": seq_len,
            "step_time_ratio": round(spk["step_s"] / ref["step_s"], 3),
            "peak_memory_ratio": round(spk["peak_mb"] / ref["peak_mb"], 3),
            "wall_time_ratio": round(spk["wall_s"] / ref["wall_s"], 3),
            "adapter_only_step_time_ratio": round(spk_ann["step_s"] / ref["step_s"], 3),
            "adapter_only_peak_memory_ratio": round(spk_ann["peak_mb"] / ref["peak_mb"], 3),
            "spiking_step_cpu_s": round(spk["step_s"], 4),
            "lora_step_cpu_s": round(ref["step_s"], 4),
            "spiking_ann_step_cpu_s": round(spk_ann["step_s"], 4),
            "spiking_peak_mb": round(spk["peak_mb"], 1),
            "lora_peak_mb": round(ref["peak_mb"], 1),
            "spiking_ann_peak_mb": round(spk_ann["peak_mb"], 1),
            "raw": res,
        }
        for neuron in args.extra_neurons:
            extra = res[f"spiking_{neuron}"]
            row[f"{neuron}_step_time_ratio"] = round(extra["step_s"] / ref["step_s"], 3)
            row[f"{neuron}_peak_memory_ratio"] = round(extra["peak_mb"] / ref["peak_mb"], 3)
        row["meets_time_target"] = row["step_time_ratio"] <= TIME_TARGET
        row["meets_memory_target"] = row["peak_memory_ratio"] <= MEMORY_TARGET
        rows.append(row)
        print({k: v for k, v in row.items() if k != "raw"}, flush=True)
    from hybridtune.ops import activate, backend_info

    activate()  # resolve the backend so the record says what ran (CPU tensors always run the reference)

    out = {
        "benchmark": "spiking LoRA vs plain peft LoRA, one training step (forward + backward), CPU",
        "model": "tiny random llama (smoke)" if args.tiny else
                 "default (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to fp32)",
        "conversion": conversion.to_dict() if hasattr(conversion, "to_dict") else str(conversion),
        "adapter": {"r": args.rank, "alpha": args.alpha, "targets": args.targets, "neuron": args.neuron,
                    "threshold": args.threshold, "surrogate": "atan", "slope": 2.0},
        "batch": args.batch,
        "repeats": args.repeats,
        "mem_repeats": args.mem_repeats,
        "targets": {"step_time_ratio": TIME_TARGET, "peak_memory_ratio": MEMORY_TARGET},
        "method": {
            "time": "median process CPU time of forward(labels)+backward+zero_grad, variants interleaved per repeat "
                    "(wall-time ratio reported as wall_time_ratio)",
            "memory": "peak of glibc mallinfo2 heap-in-use (arena + mmapped) sampled every 0.2 ms during one step, "
                      "minus the value before the step (memory above the resident weights); median",
            "reference": "plain peft LoRA on the ANN; 'adapter_only' ratios use spiking LoRA on the ANN",
        },
        "op_backend": backend_info(),
        "hybridtune": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python benchmarks/adapters.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("out", "tiny")) + (" --tiny" if args.tiny else ""),
        "load_average_at_end": list(os.getloadavg()),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
